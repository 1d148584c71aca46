"""Scenario 9, security: secrets stay out of every output; TLS is verified; safe defaults.

1. Secrets. Two workers (V1 and V3 signatures) run with an STS key and a Redis password,
   under faults that exercise every error path (resets, hangs past the timeout, HTML pages,
   truncated JSON, 5xx, throttling, dropped confirmations, refused credentials for a while,
   retries exhausted), with log level debug. The secret, the token, the Redis password and
   every V1 signature the stand-in received (read from its access log) must appear in no log
   line, dead letter, reconcile entry, exit-2 message or ``check-config`` output; neither may
   any ``Signature=<value>`` or V3 ``Signature=<64 hex>`` that is not masked.
2. TLS. The stand-in behind TLS with a certificate from a throwaway CA: a worker without
   the CA confirms nothing (certificate verify failed); ackworker has no setting for an API
   CA bundle, so the CA is given the way Python's ssl default context takes it,
   ``SSL_CERT_FILE``, and then the same numbers are confirmed.
3. The HTTP endpoint (``ACKWORKER_HTTP_PORT``) listens on 127.0.0.1 unless told otherwise.
4. A Redis that demands a password and gets none (or a wrong one): exit 2, one clear line.
"""

from __future__ import annotations

import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from chaos.common import Rig, expect_invariant, stop_cleanly
from chaos.procs import (
    PYTHON,
    REPO,
    MockApiProc,
    Stage,
    WorkerProc,
    clean_env,
    free_port,
    numbers,
    wait_until,
    worker_env,
)
from chaos.report import Mode, Outcome, Scenario

KEY_ID = "LTAIsecurityKey0001"
SECRET = "S3cr3t-never-log-me-0123456789"
TOKEN = "CAISsts-token-never-log-me-abcdef"
REDIS_PW = "redis-pw-never-log-me-42"
SIZES = {"full": 2000, "reduced": 150}
FAULTS = {
    "reset_rate": 0.05,
    "html_rate": 0.05,
    "truncated_rate": 0.05,
    "error_rate": 0.05,
    "throttle_rate": 0.05,
    "hang_rate": 0.03,
    "drop_rate": 0.02,
}
_LEAKY = (
    re.compile(r"Signature=(?!\*\*\*)[A-Za-z0-9%+/=]{8,}"),
    re.compile(r"Signature=[0-9a-f]{64}"),
)


def _secrets_env(rig: Rig, consumer: str, signature: str, **extra: str) -> dict[str, str]:
    env = worker_env(rig.redis.url, f"sec{signature}", rig.api.url, consumer, **extra)
    env.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID=KEY_ID,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET,
        ALIBABA_CLOUD_SECURITY_TOKEN=TOKEN,
        ACKWORKER_SIGNATURE=signature,
        ACKWORKER_LOG_LEVEL="debug",
        ACKWORKER_HTTP_TIMEOUT_S="1",
        ACKWORKER_MAX_ATTEMPTS="3",
    )
    return env


def _signatures(api: MockApiProc) -> set[str]:
    found: set[str] = set()
    for match in re.finditer(r"Signature=([^&\s\"]+)", api.output()):
        found.add(match.group(1))
        found.add(urllib.parse.unquote(match.group(1)))
    return found


def _streams_text(rig: Rig, prefix: str) -> str:
    parts: list[str] = []
    with rig.client() as client:
        for key in (f"{prefix}:dead", f"{prefix}:reconcile"):
            for _, fields in client.xrange(key):
                parts += [f"{k!r}={v!r}" for k, v in fields.items()]
    return "\n".join(parts)


def _leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    found = []
    for where, text in texts.items():
        for name, value in secrets.items():
            if value and value in text:
                found.append(f"{name} in {where}")
        for pattern in _LEAKY:
            match = pattern.search(text)
            if match:
                found.append(f"unmasked {match.group(0)[:20]}... in {where}")
    return found


def _http_on_loopback(outcome: Outcome, worker: WorkerProc, port: int) -> str:
    def listening() -> list[str]:
        conns = psutil.Process(worker.pid).net_connections(kind="tcp")
        return [c.laddr.ip for c in conns if c.status == "LISTEN" and c.laddr.port == port]

    wait_until(lambda: bool(listening()), timeout_s=10, what="HTTP endpoint listening")
    addresses = listening()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        status = response.status
    outcome.expect(addresses == ["127.0.0.1"], f"HTTP endpoint listens on {addresses}")
    outcome.expect(status == 200, f"/healthz answered {status}")
    return f"HTTP endpoint on {', '.join(addresses)} by default"


def _refuse_credentials_for_a_while(rig: Rig, workers: list[WorkerProc]) -> None:
    rig.api.keys(
        [{"access_key_id": KEY_ID, "access_key_secret": "rotated", "security_token": TOKEN}]
    )
    wait_until(
        lambda: all(w.has("api.auth_failed") for w in workers), timeout_s=30, what="auth_failed"
    )
    rig.api.keys([{"access_key_id": KEY_ID, "access_key_secret": SECRET, "security_token": TOKEN}])


def _secrets(
    outcome: Outcome, stage: Stage, count: int
) -> tuple[str, dict[str, str], dict[str, str]]:
    server = stage.redis(password=REDIS_PW)
    key = ["--access-key-id", KEY_ID, "--access-key-secret", SECRET, "--security-token", TOKEN]
    api = stage.mock_api(*key, "--access-log", "--hang-s", "2", env=clean_env())
    rig = Rig(stage, server, api)
    api.faults(**FAULTS)
    http_port = free_port()
    workers = [
        stage.worker("v1", _secrets_env(rig, "v1", "v1")),
        stage.worker("v3", _secrets_env(rig, "v3", "v3", ACKWORKER_HTTP_PORT=str(http_port))),
    ]
    http = _http_on_loopback(outcome, workers[1], http_port)
    for worker in workers:
        rig.prefix = f"sec{worker.name}"
        ids = numbers(count, f"security-{worker.name}")
        unknown = numbers(20, f"security-unknown-{worker.name}")
        rig.push(ids)
        rig.push(unknown, seed=False)
        rig.push([""], seed=False)
    _refuse_credentials_for_a_while(rig, workers)
    for worker in workers:
        rig.prefix = f"sec{worker.name}"
        rig.wait_drained(120, f"{worker.name} settled")
    stop_cleanly(outcome, *workers)
    texts = {w.name + " output": w.output() for w in workers}
    for worker in workers:
        texts[f"{worker.name} dead/reconcile"] = _streams_text(rig, f"sec{worker.name}")
    signatures = {f"V1 signature {i}": s for i, s in enumerate(_signatures(api))}
    outcome.note(f"{len(signatures)} V1 signatures read from the stand-in's access log")
    return http, {**texts, **_exit2_texts(outcome, server.port)}, signatures


def _ackworker(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m worker <command>`` to completion (bounded), output captured."""
    return subprocess.run(
        [PYTHON, "-m", "worker", command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _exit2_texts(outcome: Outcome, port: int) -> dict[str, str]:
    texts: dict[str, str] = {}
    cases = {
        "no password": f"redis://127.0.0.1:{port}/0",
        "wrong password": f"redis://:wrong-{REDIS_PW}@127.0.0.1:{port}/0",
    }
    for label, url in cases.items():
        env = worker_env(url, "secx", "http://127.0.0.1:1", "x")
        env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = SECRET
        done = _ackworker("run", env)
        lines = done.stderr.strip().splitlines()
        outcome.expect(done.returncode == 2, f"{label}: exit {done.returncode}, not 2")
        outcome.expect(
            len(lines) == 1 and "ACKWORKER_REDIS_URL" in lines[0],
            f"{label}: stderr is not one line naming ACKWORKER_REDIS_URL: {done.stderr[-300:]!r}",
        )
        texts[f"exit-2 ({label})"] = done.stdout + done.stderr
        if lines:
            outcome.note(f"Redis {label}: exit {done.returncode}: {lines[-1][:200]}")
    env = worker_env(cases["wrong password"], "secx", "http://127.0.0.1:1", "x")
    env.update(ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET, ALIBABA_CLOUD_SECURITY_TOKEN=TOKEN)
    done = _ackworker("check-config", env)
    texts["check-config"] = done.stdout + done.stderr
    return texts


def _make_certs(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, ca_key = workdir / "ca.pem", workdir / "ca.key"
    cert, key, csr = workdir / "server.pem", workdir / "server.key", workdir / "server.csr"
    ext = workdir / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ca_subject = ["-subj", "/CN=ackworker chaos test CA", "-days", "2"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    commands: list[list[str | Path]] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"],
    ]
    commands[0] += [*ca_subject, *ca_ext]
    commands[1] += ["-subj", "/CN=127.0.0.1"]
    commands[2] += ["-out", cert, "-days", "2", "-extfile", ext]
    for args in commands:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def _tls(outcome: Outcome, stage: Stage, workdir: Path) -> str:
    ca, cert, key = _make_certs(workdir / "tls")
    server = stage.redis(name="redis-tls")
    api = stage.mock_api(
        "--cert", str(cert), "--key", str(key), name="tls-standin",
        module="chaos.tls_standin", ca_file=ca,
    )  # fmt: skip
    rig = Rig(stage, server, api, prefix="tls")
    ids = numbers(100, "tls")
    rig.push(ids)
    refused = rig.worker("no-ca", ACKWORKER_MAX_ATTEMPTS="2")

    def verify_failed() -> bool:
        return any(
            "certificate verify failed" in str(e.get("message", "")).lower()
            or "CERTIFICATE_VERIFY_FAILED" in str(e.get("message", ""))
            for e in refused.named("api.tls_failed")
        )

    wait_until(verify_failed, timeout_s=30, what="api.tls_failed: certificate verify failed")
    stop_cleanly(outcome, refused)
    stats = api.stats()
    outcome.expect(int(stats["confirmed"]) == 0, "confirmed over an unverified TLS connection")
    outcome.expect(int(stats["requests_total"]) == 0, "a request got through without the CA")
    later = numbers(100, "tls-trusted")
    rig.push(later)
    trusted = rig.worker("with-ca", SSL_CERT_FILE=str(ca))
    rig.wait_drained(60, "settled over verified TLS")
    stop_cleanly(outcome, trusted)
    ledger = rig.ledger(ids + later)
    expect_invariant(outcome, ledger)
    outcome.expect(
        ledger.confirmed >= set(ids + later), "not all confirmed with the CA in SSL_CERT_FILE"
    )
    outcome.expect(not ledger.dead_reasons, f"dead-lettered: {ledger.dead_reasons}")
    outcome.note(
        "TLS: without the CA every attempt failed 'certificate verify failed', logged as"
        " api.tls_failed; the worker held the items (fatal, like refused credentials) and"
        f" dead-lettered none; with SSL_CERT_FILE={ca.name} all"
        f" {len(ledger.confirmed & set(ids + later))} numbers were confirmed. {ledger.summary()}"
    )
    return "TLS refused without the CA, confirmed with SSL_CERT_FILE"


def run(outcome: Outcome, workdir: Path, mode: Mode) -> None:
    count = SIZES[mode]
    outcome.injected = (
        f"{count} numbers per worker (V1 and V3) with an STS key and a Redis password under"
        " 5% each of resets, HTML, truncated, 5xx, throttling, 3% hangs, 2% dropped"
        " confirmations, refused credentials for a while, log level debug; TLS stand-in with"
        " a throwaway CA; Redis with requirepass and no or a wrong password"
    )
    outcome.checked = (
        "secret, token, Redis password and V1 signatures in no log line, dead letter,"
        " reconcile entry, exit-2 message or check-config output; no unmasked Signature=;"
        " TLS verified by default; HTTP endpoint on 127.0.0.1; exit 2 naming"
        " ACKWORKER_REDIS_URL"
    )
    with Stage(workdir) as stage:
        http, texts, signatures = _secrets(outcome, stage, count)
        tls = _tls(outcome, stage, workdir)
    secrets = {"secret": SECRET, "token": TOKEN, "redis password": REDIS_PW, **signatures}
    leaks = _leaks(texts, secrets)
    outcome.expect(not leaks, "leaked: " + "; ".join(leaks[:5]))
    outcome.figure = (
        f"{len(leaks)} leaks in {sum(len(t) for t in texts.values()) // 1024} KB of output"
        f" ({len(texts)} sources); {tls}; {http}; Redis without password: exit 2"
    )


SCENARIO = Scenario("9", "Security (secrets, TLS, defaults)", run)
