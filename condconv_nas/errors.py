"""Errors that mean "bad input": the CLI reports them in one line and exits with status 2."""


class UsageError(ValueError):
    """Bad usage or bad input (a malformed spec, a missing data path, an impossible budget...)."""
