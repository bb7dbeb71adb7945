"""Rate limits on the API, counted by the `limits` library in a moving window of one minute:
requests per API key, and failed authentications per client address.

The counts live in this process (`memory://`, the embedded default, one API process) or in
Redis (TUNELAB_RATE_LIMIT_URL, shared by every API process in production).
"""

import logging
import math
import time
from typing import Literal, cast

import redis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import RedisStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from api.web.errors import RateLimited
from shared.settings import Settings

log = logging.getLogger(__name__)

# What a failed authentication tried: each kind counts apart, so a flood of bad API keys from
# an address does not lock the workers on it out of their routes, nor the other way round.
Credential = Literal["api-key", "worker-token", "metrics-token"]


class RateLimiter:
    """Requests per minute per API key and failed authentications per minute per client
    address, in moving windows of one minute.

    If Redis cannot be reached the request is allowed (and logged): losing the limits for a
    while is better than refusing every client. Redis is then left alone for
    `retry_seconds`, so an outage does not add a connection timeout to every request.
    """

    def __init__(
        self,
        storage_url: str,
        requests_per_minute: int,
        failed_auth_per_minute: int,
        key_prefix: str = "tunelab:rate",
        timeout_seconds: float = 0.5,
        retry_seconds: float = 5.0,
    ) -> None:
        self.per_key = RateLimitItemPerMinute(requests_per_minute, namespace="key")
        self.failed_auth = RateLimitItemPerMinute(failed_auth_per_minute, namespace="failed-auth")
        self.retry_seconds = retry_seconds
        if storage_url:
            self.storage = storage_from_string(
                _limits_url(storage_url),
                key_prefix=key_prefix,
                socket_connect_timeout=timeout_seconds,
                socket_timeout=timeout_seconds,
                # Redis' own errors become limits.errors.StorageError.
                wrap_exceptions=True,
            )
        else:
            self.storage = storage_from_string("memory://")
        self.strategy = MovingWindowRateLimiter(self.storage)
        self._unreachable_until = 0.0

    def count_request(self, key_prefix: str) -> None:
        """Counts one request by the API key with this visible prefix; RateLimited beyond
        its limit."""
        retry_after = self._seconds_until_allowed(self.per_key, key_prefix, count=True)
        if retry_after:
            raise RateLimited(
                f"at most {self.per_key.amount} requests a minute per API key; "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    def refuse_failing_address(self, credential: Credential, address: str) -> None:
        """RateLimited while `address` is at its limit of failed authentications with this
        kind of credential; counts nothing."""
        retry_after = self._seconds_until_allowed(
            self.failed_auth, credential, address, count=False
        )
        if retry_after:
            self._refuse_address(retry_after)

    def count_failure(self, credential: Credential, address: str) -> None:
        """Counts a failed authentication from `address`; RateLimited if it is past the limit
        (concurrent requests took the last ones since refuse_failing_address)."""
        retry_after = self._seconds_until_allowed(self.failed_auth, credential, address, count=True)
        if retry_after:
            self._refuse_address(retry_after)

    def close(self) -> None:
        if isinstance(self.storage, RedisStorage):
            # limits types its connection as a protocol that leaves close() out.
            cast(redis.Redis, self.storage.get_connection()).close()

    def _refuse_address(self, retry_after: int) -> None:
        raise RateLimited(
            f"at most {self.failed_auth.amount} failed authentications a minute per client "
            f"address; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def _seconds_until_allowed(self, item: RateLimitItem, *identifiers: str, count: bool) -> int:
        """0 if one more request is allowed (and counted, with `count`), else the whole
        seconds until it will be, at least 1."""
        if time.monotonic() < self._unreachable_until:
            return 0
        try:
            if count:
                allowed = self.strategy.hit(item, *identifiers)
            else:
                allowed = self.strategy.test(item, *identifiers)
            if allowed:
                return 0
            # The window's oldest request is a minute old at the reset time: one more fits.
            stats = self.strategy.get_window_stats(item, *identifiers)
        except StorageError as error:
            self._unreachable_until = time.monotonic() + self.retry_seconds
            log.warning(
                "rate limits not enforced for %.0f s: Redis unreachable (%s)",
                self.retry_seconds,
                error.storage_error,
            )
            return 0
        if stats.remaining > 0:
            # A request left the window between the two calls.
            return 1
        return max(1, math.ceil(stats.reset_time - time.time()))


def _limits_url(url: str) -> str:
    # redis-py (and the setting) name a Unix socket unix://, limits redis+unix://.
    if url.startswith("unix://"):
        return "redis+" + url
    return url


def make_rate_limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(
        settings.rate_limit_url, settings.requests_per_minute, settings.failed_auth_per_minute
    )
