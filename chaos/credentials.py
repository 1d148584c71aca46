"""Scenario 5, credentials: refused credentials are fixed in the file while the worker runs.

The worker reads an ``ALIBABA_CLOUD_CREDENTIALS_FILE`` (``type = sts``). First the file holds
a wrong secret: the worker must stop sending (``api.auth_failed``), dead-letter nothing, keep
every entry, and resume without a restart once the file is fixed (it re-reads the file
before each probe: 5, 10, 20, 30 s apart). Then the stand-in rotates its STS token
(``/_admin/keys``), so the worker's token is answered as expired; the file gets the new
token, and sending must resume again. Figure: seconds from each fix to sending resumed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from chaos.common import Rig, expect_invariant, no_tracebacks, stop_cleanly
from chaos.procs import Stage, WorkerProc, clean_env, numbers, wait_until, worker_env
from chaos.report import Mode, Outcome, Scenario

KEY_ID = "LTAIchaosKeyId0001"
SECRET = "chaos-secret-9f8e7d6c5b4a"
TOKENS = ("CAISchaosStsTokenOne0001", "CAISchaosStsTokenTwo0002")
SIZES = {"full": 100, "reduced": 30}
"""Numbers per phase: a trickle (a few batches), as arrives while an operator fixes a file."""
FAILED_PROBES_BEFORE_FIX = {"full": 2, "reduced": 1}
RESUME_LIMIT_S = 60.0


def write_file(path: Path, secret: str, token: str) -> None:
    """Replace the credentials file atomically, as an operator's deploy tool would."""
    text = (
        "[default]\ntype = sts\n"
        f"access_key_id = {KEY_ID}\naccess_key_secret = {secret}\nsecurity_token = {token}\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fix_and_resume(
    rig: Rig, worker: WorkerProc, fix: tuple[str, str], event: str, failures_before: int
) -> tuple[float, int]:
    """Wait for refusals, fix the file; (seconds to resume, confirmations while refused)."""
    wait_until(
        lambda: len(worker.named(event)) >= failures_before,
        timeout_s=90,
        what=f"{failures_before} {event} events",
    )
    confirmed_while_refused = int(rig.api.stats()["confirmed"])
    before_resumes = len(worker.named("api.sending_resumed"))
    write_file(rig.stage.workdir / "credentials.ini", *fix)
    fixed_at = time.monotonic()
    wait_until(
        lambda: len(worker.named("api.sending_resumed")) > before_resumes,
        timeout_s=RESUME_LIMIT_S + 5,
        what="api.sending_resumed after the fix",
    )
    return time.monotonic() - fixed_at, confirmed_while_refused


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count = SIZES[mode]
    failures = FAILED_PROBES_BEFORE_FIX[mode]
    outcome.injected = (
        f"{count} numbers per phase, 1 worker on an STS credentials file; (a) wrong secret,"
        f" fixed after {failures} refusal(s); (b) stand-in rotates the STS token (old one"
        " answered InvalidSecurityToken.Expired), file updated likewise"
    )
    outcome.checked = (
        "nothing dead-lettered; nothing confirmed while refused; sending resumes within"
        f" {RESUME_LIMIT_S:.0f} s of each fix, same process (no restart); invariant"
    )
    creds = workdir / "credentials.ini"
    workdir.mkdir(parents=True, exist_ok=True)
    write_file(creds, "not-the-secret", TOKENS[0])
    with Stage(workdir) as stage:
        server = stage.redis()
        key = ["--access-key-id", KEY_ID, "--access-key-secret", SECRET]
        api = stage.mock_api(*key, "--security-token", TOKENS[0], env=clean_env())
        rig = Rig(stage, server, api)
        env = worker_env(server.url, rig.prefix, api.url, "w1")
        for name in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
            env.pop(name)
        env["ALIBABA_CLOUD_CREDENTIALS_FILE"] = str(creds)
        worker = stage.worker("w1", env)
        first = numbers(count, "creds-secret")
        rig.push(first)
        wrong_s, leaked_a = _fix_and_resume(
            rig, worker, (SECRET, TOKENS[0]), "api.auth_failed", failures
        )
        rig.wait_drained(60, "phase (a) settled")
        api.keys(
            [{"access_key_id": KEY_ID, "access_key_secret": SECRET, "security_token": TOKENS[1]}]
        )
        second = numbers(count, "creds-sts")
        before_b = len(worker.named("api.auth_failed"))
        rig.push(second)
        expired_s, leaked_b = _fix_and_resume(
            rig, worker, (SECRET, TOKENS[1]), "api.auth_failed", before_b + failures
        )
        leaked_b -= count
        rig.wait_drained(60, "phase (b) settled")
        codes = sorted({str(e.get("code")) for e in worker.named("api.auth_failed")})
        restarts = len(worker.named("worker.started"))
        stop_cleanly(outcome, worker)
        no_tracebacks(outcome, worker)
        ledger = rig.ledger(first + second)
    expect_invariant(outcome, ledger)
    outcome.expect(restarts == 1, f"worker started {restarts} times")
    outcome.expect(leaked_a == 0, f"{leaked_a} confirmed with a wrong secret")
    outcome.expect(leaked_b == 0, f"{leaked_b} confirmed with an expired token")
    outcome.expect(
        not ledger.dead_reasons, f"dead-lettered while refused: {dict(ledger.dead_reasons)}"
    )
    outcome.expect(ledger.confirmed >= set(first + second), "not every number was confirmed")
    for label, seconds in (("wrong secret", wrong_s), ("expired token", expired_s)):
        outcome.expect(seconds <= RESUME_LIMIT_S, f"{label}: resumed {seconds:.0f} s after fix")
    outcome.figure = (
        f"resumed {wrong_s:.1f} s after the secret was fixed and {expired_s:.1f} s after the"
        f" token was renewed, no restart; refusals logged with codes {', '.join(codes)}"
    )
    outcome.note(ledger.summary())


SCENARIO = Scenario("5", "Credentials refused, then fixed in the file", run)
