"""``ackworker mock-api``: run the stand-in from the command line until SIGTERM or SIGINT.

When it listens it prints exactly one line, ``mock-api listening on http://HOST:PORT``, to
stdout, so scripts can start it with ``--port 0`` and read the address. With ``--seed N``
and no ``--seed-out``, the generated numbers go to stdout (one per line, before the
listening line), and the listening line goes to stderr instead.

Numeric flags are read as text and checked here, so a bad value is one ``ConfigError``
line naming the flag (exit 2), not an argparse usage dump. The secret is never printed.
``worker.commands.cli`` imports this module only for ``ackworker mock-api`` itself, and it
imports the HTTP stack only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from worker.dev.mockapi.faults import FAULT_NAMES, Faults, InvalidFault
from worker.errors import ConfigError

if TYPE_CHECKING:
    from worker.dev.mockapi.auth import AcceptedKey
    from worker.dev.mockapi.server import MockApi
    from worker.dev.mockapi.state import TaskStore

DEFAULT_PORT = 8790
_FAULT_HELP = {
    "latency_ms": "added delay before answering, milliseconds",
    "jitter_ms": "extra random delay, uniform 0..N milliseconds",
    "throttle_rate": "probability of Throttling.User (HTTP 400)",
    "retry_after_ms": "send x-acs-retry-after with throttling answers, milliseconds",
    "error_rate": "probability of a 5xx (503 ServiceUnavailable / 500 InternalError)",
    "quota_rps": "requests per second allowed, 1 s burst (0 = unlimited)",
    "reset_rate": "probability of resetting the connection without an answer",
    "hang_rate": "probability of holding the request unanswered for --hang-s",
    "hang_s": "how long a hung request is held, seconds (default 60)",
    "html_rate": "probability of an HTTP 502 HTML proxy page",
    "truncated_rate": "probability of confirming, then answering truncated JSON",
    "drop_rate": "per number: probability a confirmation is silently lost",
    "clock_offset_s": "the stand-in's clock runs this many seconds ahead",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_mock_api_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mock-api`` flags to ``parser`` (values are validated when it runs)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--port", default=str(DEFAULT_PORT), help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument("--seed-file", metavar="FILE", help="task-detail numbers, one a line")
    parser.add_argument(
        "--seed",
        metavar="N",
        help="generate N numbers, written to stdout (the listening line then goes to stderr)",
    )
    parser.add_argument("--seed-out", metavar="FILE", help="write --seed numbers here, not stdout")
    parser.add_argument(
        "--access-key-id", metavar="ID", help="accepted key (env ALIBABA_CLOUD_ACCESS_KEY_ID)"
    )
    parser.add_argument(
        "--access-key-secret",
        metavar="SECRET",
        help="its secret (env ALIBABA_CLOUD_ACCESS_KEY_SECRET, else testsecret)",
    )
    parser.add_argument(
        "--security-token",
        metavar="TOKEN",
        help="require this STS token (env ALIBABA_CLOUD_SECURITY_TOKEN)",
    )
    group = parser.add_argument_group("faults")
    for name in FAULT_NAMES:
        group.add_argument(_flag(name), metavar="N", help=_FAULT_HELP[name])
    group.add_argument("--fault-seed", metavar="N", help="seed fault decisions (reproducible)")
    parser.add_argument(
        "--access-log", action="store_true", help="log every request to stderr (slow)"
    )


def mock_api_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the stand-in until SIGTERM or SIGINT; returns 0. Bad flags raise ConfigError."""
    port = _int_flag("--port", args.port, 0, 65535)
    faults = _faults_from_args(args)
    fault_seed = None if args.fault_seed is None else _int_flag("--fault-seed", args.fault_seed)
    keys = _credentials(args, environ)
    seed_count = None if args.seed is None else _int_flag("--seed", args.seed, 0, 10_000_000)
    seed_ids = _read_seed_file(args.seed_file) if args.seed_file else []
    serving = _serve(
        args,
        port=port,
        faults=faults,
        fault_seed=fault_seed,
        keys=keys,
        seed_ids=seed_ids,
        seed_count=seed_count,
    )
    return asyncio.run(serving)


async def _serve(
    args: argparse.Namespace,
    *,
    port: int,
    faults: Faults,
    fault_seed: int | None,
    keys: AcceptedKey,
    seed_ids: list[str],
    seed_count: int | None,
) -> int:
    from worker.dev.mockapi.server import start_mock_api
    from worker.dev.mockapi.state import TaskStore

    if args.access_log:
        # aiohttp logs access lines through stdlib logging at INFO; show them on stderr.
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    store = TaskStore()
    store.seed(seed_ids)
    try:
        api = await start_mock_api(
            host=args.host,
            port=port,
            keys=keys,
            faults=faults,
            state=store,
            fault_seed=fault_seed,
            access_log=args.access_log,
        )
    except OSError as exc:
        raise ConfigError(f"--port {port}: cannot listen on {args.host}: {exc}") from None
    try:
        await _announce_and_wait(api, store, seed_count, args.seed_out)
    finally:
        await api.aclose()
    return 0


async def _announce_and_wait(
    api: MockApi, store: TaskStore, seed_count: int | None, seed_out: str | None
) -> None:
    line_to: TextIO = sys.stdout
    if seed_count is not None:
        generated = store.seed_random(seed_count)
        line_to = _write_seed_ids(generated, seed_out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"mock-api listening on {api.url}", file=line_to, flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _write_seed_ids(ids: list[str], seed_out: str | None) -> TextIO:
    """Write generated ids; returns where the listening line goes (stderr if ids took stdout)."""
    text = "".join(f"{number}\n" for number in ids)
    if seed_out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return sys.stderr
    try:
        Path(seed_out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--seed-out {seed_out}: cannot write: {exc.strerror}") from None
    return sys.stdout


def _int_flag(flag: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{flag} {raw}: must be a whole number") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{flag} {raw}: must be from {minimum} to {maximum}")
    return value


def _faults_from_args(args: argparse.Namespace) -> Faults:
    faults = Faults()
    for name in FAULT_NAMES:
        raw = getattr(args, name)
        if raw is None:
            continue
        try:
            faults.update({name: _number(raw, integer=name == "retry_after_ms")})
        except (ValueError, InvalidFault) as exc:
            why = exc.message if isinstance(exc, InvalidFault) else "must be a number"
            raise ConfigError(f"{_flag(name)} {raw}: {why}") from None
    return faults


def _number(raw: str, *, integer: bool) -> float | int:
    value = int(raw) if integer else float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _credentials(args: argparse.Namespace, environ: Mapping[str, str]) -> AcceptedKey:
    from worker.dev.mockapi.auth import AcceptedKey

    key_id = args.access_key_id or environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID") or "testid"
    secret = args.access_key_secret or environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    token = args.security_token or environ.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None
    return AcceptedKey(key_id, secret or "testsecret", token)


def _read_seed_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--seed-file {path}: cannot read: {why}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
