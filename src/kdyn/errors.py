"""User-facing errors.

`KdynError` is raised for bad input: an unknown model or step, a missing file, a malformed corpus,
an impossible configuration. Entry points catch it and print its message as one line (no
traceback). Write messages that say what was wrong *and* how to fix it.
"""


class KdynError(Exception):
    """A problem with the user's input or configuration (printed without a traceback)."""
