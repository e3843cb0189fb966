"""The faults `python -m training` reports in one line (exit 2). No TensorFlow here: the CLI catches these before a
subcommand has imported it."""


class DataError(Exception):
    """A missing, unreadable or corrupt MNIST file; the message names the file."""


class RunError(Exception):
    """A run directory or configuration that does not fit the request (e.g. exists without --resume)."""
