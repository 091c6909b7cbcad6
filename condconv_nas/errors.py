"""Errors that mean "bad input": the CLI reports them in one line and exits with status 2."""


class UsageError(ValueError):
    """Bad usage or bad input (a malformed spec, a missing data path, an impossible budget...)."""


class NasWarning(UserWarning):
    """Something a user should know that does not stop the work; the CLI prints it in one line."""


class StaleTableWarning(NasWarning):
    """A cached latency table disagreed with a measurement made now and was set aside."""
