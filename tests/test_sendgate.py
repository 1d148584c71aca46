"""The send gate: closed by a fatal answer, opened only by an answer to a request sent since."""

from __future__ import annotations

import pytest
import structlog

from tests.harness import FAST_POLICY
from worker.clock import SYSTEM_CLOCK
from worker.errors import AuthError
from worker.pipeline.sendgate import SendGate

pytestmark = pytest.mark.anyio


def _refused() -> AuthError:
    return AuthError("InvalidAccessKeyId.NotFound", "Specified access key is not found.")


async def test_a_late_answer_to_a_request_sent_before_the_close_keeps_it_closed() -> None:
    gate = SendGate(FAST_POLICY, SYSTEM_CLOCK, lambda: None)
    before = gate.epoch  # a request goes out while the gate is open...
    prober = object()
    gate.on_fatal(_refused(), prober)  # ...then another is refused
    with structlog.testing.capture_logs() as logs:
        gate.on_answer(before)  # the first one's answer arrives late
    assert not gate.is_open
    assert gate.problem == "InvalidAccessKeyId.NotFound"
    assert "api.sending_resumed" not in [e["event"] for e in logs]

    await gate.wait_turn(prober)  # the probe goes out after its back-off
    gate.on_answer(gate.epoch)
    assert gate.is_open
    assert gate.problem is None


async def test_each_close_starts_a_new_epoch() -> None:
    gate = SendGate(FAST_POLICY, SYSTEM_CLOCK, lambda: None)
    token = object()
    gate.on_fatal(_refused(), token)
    first = gate.epoch
    gate.on_answer(first)
    gate.on_fatal(_refused(), token)
    gate.on_answer(first)  # an answer from the first closing's probe, late
    assert not gate.is_open
