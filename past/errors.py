"""The one exception family the CLI turns into a single clear error line (exit status 2)."""


class PastError(Exception):
    """Base class for every expected failure: bad input, missing component, unhealthy endpoint."""
