"""The one exception family the CLI turns into a single clear error line (exit status 2), and the one rule
for which endpoint errors are worth a retry."""


class PastError(Exception):
    """Base class for every expected failure: bad input, missing component, unhealthy endpoint."""


def transient_api_error(e: BaseException) -> bool:
    """An OpenAI-client error that a retry may cure: connection, timeout, 5xx, 429. Any other 4xx will not."""
    import openai

    return isinstance(e, (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                          openai.RateLimitError))
