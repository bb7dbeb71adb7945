"""The rate limiter on its own: moving windows in this process under a clock the test holds,
and an unreachable Redis."""

import logging
import time

import pytest
from limits.storage import MemoryStorage, RedisStorage

from api.auth.rate_limit import RateLimiter, make_rate_limiter
from api.web.errors import RateLimited
from shared.settings import Settings

# Fifty seconds into a minute, so a fixed one-minute window would end 10 s later.
START = 60.0 * 29_000_000 + 50


class Clock:
    """Stands in for time.time, which the limits library and the limiter both read."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(START)
    monkeypatch.setattr(time, "time", clock)
    return clock


def in_process(requests_per_minute: int = 5, failed_auth_per_minute: int = 3) -> RateLimiter:
    return RateLimiter(
        "", requests_per_minute=requests_per_minute, failed_auth_per_minute=failed_auth_per_minute
    )


def retry_after(error: RateLimited | None) -> int | None:
    return None if error is None else int((error.headers or {})["Retry-After"])


def refusal(action, *args: str) -> RateLimited | None:
    """The RateLimited that `action(*args)` raises, or None if it is allowed."""
    try:
        action(*args)
    except RateLimited as error:
        return error
    return None


class TestPerKey:
    def test_a_burst_at_the_limit_passes_then_the_next_waits_for_the_oldest(self, clock):
        limiter = in_process(requests_per_minute=5)
        assert [refusal(limiter.count_request, "abc") for _ in range(3)] == [None] * 3
        # 20 s later, past where a fixed window would have started afresh.
        clock.now = START + 20
        assert [refusal(limiter.count_request, "abc") for _ in range(2)] == [None] * 2
        refused = refusal(limiter.count_request, "abc")
        assert refused is not None
        assert refused.status == 429
        # The three oldest are a minute old at START + 60: 40 s from now.
        assert retry_after(refused) == 40
        assert "5 requests a minute" in refused.detail
        # Another key has its own count.
        assert refusal(limiter.count_request, "other") is None

    def test_requests_leave_the_window_a_minute_after_they_were_made(self, clock):
        limiter = in_process(requests_per_minute=5)
        for at in (0, 0, 0, 20, 20):
            clock.now = START + at
            assert refusal(limiter.count_request, "abc") is None
        clock.now = START + 59.5
        assert retry_after(refusal(limiter.count_request, "abc")) == 1
        # The three from START have left; the two from START + 20 are still in.
        clock.now = START + 60.5
        assert [refusal(limiter.count_request, "abc") for _ in range(3)] == [None] * 3
        assert retry_after(refusal(limiter.count_request, "abc")) == 20


class TestFailedAuthentication:
    def test_an_address_at_its_failure_limit_is_refused_until_the_oldest_is_a_minute_old(
        self, clock
    ):
        limiter = in_process(failed_auth_per_minute=3)
        for second in range(3):
            clock.now = START + second
            # The check before the credentials are looked at counts nothing.
            assert refusal(limiter.refuse_failing_address, "api-key", "198.51.100.7") is None
            assert refusal(limiter.count_failure, "api-key", "198.51.100.7") is None
        clock.now = START + 10
        refused = refusal(limiter.refuse_failing_address, "api-key", "198.51.100.7")
        assert retry_after(refused) == 50
        assert refused is not None and "3 failed authentications" in refused.detail
        # One past the limit, as when concurrent requests took the last slot.
        assert retry_after(refusal(limiter.count_failure, "api-key", "198.51.100.7")) == 50
        # Another address, and the worker token from this one, count apart.
        assert refusal(limiter.refuse_failing_address, "api-key", "203.0.113.9") is None
        assert refusal(limiter.refuse_failing_address, "worker-token", "198.51.100.7") is None
        clock.now = START + 60.5
        assert refusal(limiter.refuse_failing_address, "api-key", "198.51.100.7") is None

    def test_failures_do_not_count_against_the_per_key_limit(self, clock):
        limiter = in_process(requests_per_minute=1, failed_auth_per_minute=1)
        assert refusal(limiter.count_failure, "api-key", "198.51.100.7") is None
        assert refusal(limiter.count_request, "abc") is None


def on_unreachable_redis(retry_seconds: float) -> RateLimiter:
    """A limiter of one request a minute, counting in a Redis that never answers (nothing
    listens on port 1), which it leaves alone for `retry_seconds` after each failure."""
    return RateLimiter(
        "redis://127.0.0.1:1/0",
        requests_per_minute=1,
        failed_auth_per_minute=1,
        timeout_seconds=0.2,
        retry_seconds=retry_seconds,
    )


class TestUnreachableRedis:
    def test_requests_are_allowed_and_one_warning_logged_while_redis_is_left_alone(self, caplog):
        limiter = on_unreachable_redis(retry_seconds=60)
        with caplog.at_level(logging.WARNING, logger="api.auth.rate_limit"):
            refusals = [refusal(limiter.count_request, "abc") for _ in range(5)]
            refusals += [refusal(limiter.count_failure, "api-key", "a") for _ in range(5)]
        limiter.close()
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert refusals == [None] * 10
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING

    def test_redis_is_tried_again_once_the_pause_is_over(self, caplog):
        limiter = on_unreachable_redis(retry_seconds=0)
        with caplog.at_level(logging.WARNING, logger="api.auth.rate_limit"):
            refusals = [refusal(limiter.count_request, "abc") for _ in range(3)]
        limiter.close()
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert refusals == [None] * 3
        assert len(warnings) == 3


class TestMakeRateLimiter:
    def test_counts_in_this_process_without_a_url(self, settings: Settings):
        limiter = make_rate_limiter(
            settings.model_copy(update={"requests_per_minute": 7, "failed_auth_per_minute": 4})
        )
        assert isinstance(limiter.storage, MemoryStorage)
        assert (limiter.per_key.amount, limiter.failed_auth.amount) == (7, 4)

    @pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "unix:///tmp/no-redis.sock"])
    def test_counts_in_redis_with_a_url(self, settings: Settings, url: str):
        # Nothing is connected until the first request is counted.
        limiter = make_rate_limiter(settings.model_copy(update={"rate_limit_url": url}))
        assert isinstance(limiter.storage, RedisStorage)
        limiter.close()
