"""The one error type the CLI turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad input: the message names what was wrong and what is accepted."""
