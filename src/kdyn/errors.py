"""User-facing errors.

`KdynError` is raised for bad input: an unknown model or step, a missing file, a malformed corpus,
an impossible configuration. Entry points catch it and print its message as one line (no
traceback). Write messages that say what was wrong *and* how to fix it.
"""


class KdynError(Exception):
    """A problem with the user's input or configuration (printed without a traceback)."""


# Exit statuses of the entry points (a scheduler reads them): 0 completed, 1 a bug (traceback),
# 2 bad input (one line), EXIT_INTERRUPTED stopped by SIGTERM after saving checkpoints/last.ckpt
# (128 + SIGTERM, the shell's convention for a job terminated by SIGTERM): rerun or requeue to resume.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 143
