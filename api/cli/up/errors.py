"""The one error `cshare up` reports (see api.cli.up)."""


class StackError(Exception):
    """A problem to report in one sentence (the CLI prints it and exits non-zero)."""
