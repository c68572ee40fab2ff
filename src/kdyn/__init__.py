"""kdyn: measure and steer how language models acquire, keep and forget factual knowledge."""

__version__ = "0.1.0"
