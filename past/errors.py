"""The one exception family the CLI turns into a single clear error line (exit status 2), the one rule for
which endpoint errors are worth a retry, and the one retry loop (tenacity's) every endpoint call goes through."""

from __future__ import annotations

from collections.abc import Callable


class PastError(Exception):
    """Base class for every expected failure: bad input, missing component, unhealthy endpoint."""


def transient_api_error(e: BaseException) -> bool:
    """An OpenAI-client error that a retry may cure: connection, timeout, 5xx, 429. Any other 4xx will not."""
    import openai

    return isinstance(e, (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                          openai.RateLimitError))


def retry_policy(retries: int, backoff_s: float, asynchronous: bool = False,
                 transient: Callable[[BaseException], bool] = transient_api_error):
    """tenacity's loop for one endpoint call: `retries` more attempts after a transient error, backoff_s·2^k
    apart, then the last error re-raised. Use as `for attempt in retry_policy(...): with attempt: call()`
    (`async for` with asynchronous=True). The clients' own retries stay off (max_retries=0), so every attempt
    is counted by the caller and the backoff is the caller's to set."""
    from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    return (AsyncRetrying if asynchronous else Retrying)(
        stop=stop_after_attempt(retries + 1), wait=wait_exponential(multiplier=backoff_s),
        retry=retry_if_exception(transient), reraise=True)
