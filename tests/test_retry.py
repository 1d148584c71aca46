"""The shared retry helpers: API retries (ApiRetry), the Redis back-off, the two-phase stop."""

from __future__ import annotations

import random
from collections.abc import Mapping, MutableMapping
from typing import Any

import anyio.lowlevel
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import AuthError, PermanentApiError, ServerError, ThrottledError
from worker.lifecycle import TwoPhaseStop
from worker.retry import REDIS_BACKOFF_CAP_S, ApiRetry, RetryPolicy, redis_backoff_s

pytestmark = pytest.mark.anyio

POLICY = RetryPolicy(max_attempts=3, base_s=0.5, cap_s=4.0)


def _retry(throttled: list[float | None] | None = None) -> tuple[ApiRetry, list[Any]]:
    events: list[Any] = []

    def capture(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        events.append(event)
        raise structlog.DropEvent

    log = structlog.wrap_logger(None, processors=[capture])

    async def note(retry_after_s: float | None) -> None:
        assert throttled is not None
        throttled.append(retry_after_s)

    hook = note if throttled is not None else None
    return ApiRetry(POLICY, random.Random(1), log=log, event="x.retry", throttled=hook), events


async def test_a_retryable_error_is_retried_until_attempts_run_out() -> None:
    retry, _ = _retry()
    error = ServerError("ServiceUnavailable")
    assert await retry.failed(error)
    assert await retry.failed(error)
    assert not await retry.failed(error)  # the third of three attempts failed
    assert retry.failures == 3


@pytest.mark.parametrize("error", [PermanentApiError("InvalidParam"), AuthError("Forbidden")])
async def test_an_error_that_is_not_retryable_gives_up_at_once(error: Exception) -> None:
    retry, _ = _retry()
    assert not await retry.failed(error)  # type: ignore[arg-type]


async def test_throttling_is_reported_even_on_the_last_attempt() -> None:
    seen: list[float | None] = []
    retry, _ = _retry(seen)
    throttled = ThrottledError("Throttling.User", retry_after_s=2.0)
    for _ in range(POLICY.max_attempts):
        await retry.failed(throttled)
    await retry.failed(ServerError("InternalError"))
    assert seen == [2.0, 2.0, 2.0]


async def test_back_off_logs_the_callers_fields_and_honours_retry_after() -> None:
    retry, events = _retry()
    error = ThrottledError("Throttling", "slow down", retry_after_s=30.0)
    await retry.failed(error)
    delay = retry.back_off(error, batch_id="b1")
    assert delay == 30.0  # never less than the server's hint, even above cap_s
    (event,) = events
    assert event["event"] == "x.retry"
    assert list(event)[:2] == ["batch_id", "code"]
    assert event | {"error": None} == {
        "event": "x.retry",
        "batch_id": "b1",
        "code": "Throttling",
        "error": None,
        "attempt": 1,
        "delay_s": 30.0,
    }


@given(st.integers(min_value=1, max_value=10_000))
def test_the_redis_back_off_doubles_from_its_first_wait_to_its_cap(failures: int) -> None:
    delay = redis_backoff_s(failures)
    assert 0.2 <= delay <= REDIS_BACKOFF_CAP_S
    if failures > 1:
        assert delay == min(REDIS_BACKOFF_CAP_S, 2 * redis_backoff_s(failures - 1))
    assert redis_backoff_s(failures, cap_s=2.0) == min(delay, 2.0)


async def test_two_phase_stop_drains_first_then_cancels() -> None:
    stop = TwoPhaseStop()
    reached_end = False
    with stop.hard:
        assert stop.request()  # first: drain
        assert stop.is_stopping
        assert not stop.hard.cancel_called
        assert not stop.request()  # second: now
        await anyio.lowlevel.checkpoint()  # the cancelled scope ends the block here
        reached_end = True
    assert not reached_end
    assert stop.hard.cancelled_caught
