"""``python -m worker.dev.demo`` (``make demo``): the main job end to end, on embedded defaults.

It starts a throwaway ``redis-server`` on a free loopback port (never 6379, nothing saved) and
the Domain API stand-in (``ackworker mock-api``) with mild faults, seeded with generated
task-detail numbers. It enqueues those numbers with ``ackworker enqueue``, followed by some
duplicates and some valid numbers the stand-in does not know, and writes malformed entries
raw with XADD. Then it runs ``ackworker run`` until ``XLEN demo:tasks`` is 0, stops it with
SIGTERM, and prints what happened, read from the stand-in's admin stats, the worker's
``worker.stopped`` log line and the ``demo:dead`` and ``demo:reconcile`` streams.

``make demo`` then runs the closed loop, :mod:`worker.dev.closed_loop`, whose ``ackworker poll``
finds the results itself; it reuses the process helpers below.

Every process it started is stopped on the way out: on success, on failure and on Ctrl-C.
Exit code 0 when every promise held, 1 with a message otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import redis

# Re-exported: the rest of the package imports them from here.
from worker.dev.sandbox import clean_env as clean_env
from worker.dev.sandbox import free_port as free_port

T = TypeVar("T")

PREFIX = "demo"
TASKS, DEAD, RECONCILE = f"{PREFIX}:tasks", f"{PREFIX}:dead", f"{PREFIX}:reconcile"
ACCESS_KEY_ID, ACCESS_KEY_SECRET = "testid", "testsecret"  # the stand-in's defaults
# Mild weather: a few throttling and 5xx answers, a little latency; reproducible.
MOCK_FAULTS = (
    *("--throttle-rate", "0.03", "--error-rate", "0.03"),
    *("--latency-ms", "20", "--jitter-ms", "10", "--fault-seed", "1"),
)
WORKER_SETTINGS = {
    "ACKWORKER_KEY_PREFIX": PREFIX,
    "ACKWORKER_RATE_LIMIT": "50",
    "ACKWORKER_LINGER_MS": "100",
    "ACKWORKER_CLAIM_IDLE_MS": "5000",
}
STOP_TIMEOUT_S = 40.0  # above the worker's default 25 s shutdown grace
# Entries without a valid id, as a careless or hostile producer might write them.
MALFORMED: tuple[dict[bytes, bytes], ...] = (
    {b"task_no": b"T-no-id"},
    {b"id": b""},
    {b"id": b"f" * 65},
    {b"id": b"\xff\xfe\x00\x01\x80binary"},
    {b"id": b";rm -rf /"},
    {b"id": b"1' OR '1'='1"},
    {b"id": b"../../etc/passwd"},
    {b"id": b"two words"},
    {b"id": "номер".encode()},
    {b"id": b"line\nbreak", b"domain": b"example.com"},
)


class DemoError(Exception):
    """The demo could not finish; ``str()`` is the one-line reason shown."""


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Every child the demo started, each in its own session so a terminal's Ctrl-C reaches
    only the demo, which then stops them in order."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str], *, out: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout and stderr going to ``out``."""
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every child still running, newest first: SIGTERM, then SIGKILL."""
        for proc in reversed(self._started):
            stop(proc, timeout_s=STOP_TIMEOUT_S)


def stop(proc: subprocess.Popen[bytes], *, timeout_s: float) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``timeout_s``; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def poll(probe: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Call ``probe`` until it returns a value; raise DemoError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)
    return value


def check_alive(proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """Raise DemoError if ``proc`` has exited."""
    if proc.poll() is not None:
        raise DemoError(f"{name} exited with code {proc.returncode}; see {log}")


# --- redis-server and the stand-in -------------------------------------------------------


def start_redis(procs: Processes, workdir: Path) -> str:
    """Start a throwaway redis-server; returns its URL. Retries if a port was taken."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise DemoError("redis-server not found: run 'make setup', or install redis-server")
    reason = ""
    for _ in range(3):  # a port found free may be taken before redis-server binds it
        port = free_port()
        log = workdir / f"redis-{port}.log"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        proc = procs.start([*args, "--appendonly", "no", "--dir", str(workdir)], out=log, env={})
        try:
            return _wait_for_redis(proc, port, log)
        except DemoError as exc:
            stop(proc, timeout_s=5)
            reason = str(exc)
    raise DemoError(f"redis-server did not start: {reason}")


def _wait_for_redis(proc: subprocess.Popen[bytes], port: int, log: Path) -> str:
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        poll(lambda: _pong(client, proc, log), timeout_s=10, what=f"redis-server on {port}")
    finally:
        client.close()
    return f"redis://127.0.0.1:{port}/0"


def _pong(client: redis.Redis, proc: subprocess.Popen[bytes], log: Path) -> bool | None:
    if proc.poll() is not None:
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DemoError(f"redis-server exited with code {proc.returncode}: {last[0]}")
    try:
        return bool(client.ping()) or None
    except redis.ConnectionError:
        return None


def start_mock_api(procs: Processes, workdir: Path, log: Path, count: int) -> tuple[str, list[str]]:
    """Start ``ackworker mock-api`` seeded with ``count`` numbers; its URL and the numbers."""
    seed_out = workdir / "seeded.txt"
    args = [sys.executable, "-m", "worker", "mock-api", "--host", "127.0.0.1", "--port", "0"]
    args += ["--seed", str(count), "--seed-out", str(seed_out), *MOCK_FAULTS]
    args += ["--access-key-id", ACCESS_KEY_ID, "--access-key-secret", ACCESS_KEY_SECRET]
    proc = procs.start(args, out=log, env=clean_env())
    url = poll(lambda: _listening(proc, log), timeout_s=30, what="the stand-in to listen")
    seeded = poll(lambda: _seeded(seed_out, count), timeout_s=10, what=f"{seed_out}")
    return url, seeded


def _listening(proc: subprocess.Popen[bytes], log: Path) -> str | None:
    check_alive(proc, "the stand-in (ackworker mock-api)", log)
    found = re.search(r"mock-api listening on (http://\S+)", log.read_text(errors="replace"))
    return found.group(1).rstrip("/") if found else None


def _seeded(path: Path, count: int) -> list[str] | None:
    lines = path.read_text().split() if path.exists() else []
    return lines if len(lines) >= count else None


def admin_stats(url: str) -> dict[str, Any]:
    """The stand-in's ``GET /_admin/stats``."""
    with urllib.request.urlopen(f"{url}/_admin/stats", timeout=10) as reply:
        stats: dict[str, Any] = json.load(reply)
    return stats


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """What goes on the stream: seeded numbers, then duplicates of some, then unknown ones."""

    seeded: list[str]
    duplicates: list[str]
    unknown: list[str]

    @classmethod
    def plan(cls, seeded: list[str], duplicates: int, unknown: int) -> Workload:
        """Pick duplicates among ``seeded`` and make up valid numbers it does not hold."""
        rng = random.Random(7)
        known = set(seeded)
        strangers: list[str] = []
        while len(strangers) < unknown:
            number = f"{rng.getrandbits(128):032x}"
            if number not in known:
                strangers.append(number)
        return cls(seeded, rng.sample(seeded, min(duplicates, len(seeded))), strangers)

    def stream_order(self) -> list[str]:
        """Duplicates follow every original, so most are settled from the dedupe memory.

        Unknown numbers come last, together: their shortfall lands in one reconcile record,
        and the duplicates read with them are settled from the dedupe memory rather than sent.
        A seeded number sent in a short batch is not remembered as confirmed (a short
        ``Result`` says how many were not confirmed, not which), so its duplicate would be
        sent again and show up as a second shortfall.
        """
        return [*self.seeded, *self.duplicates, *self.unknown]


def enqueue(env: dict[str, str], numbers: list[str]) -> None:
    """Put valid numbers on the stream the way upstream pollers do: ``ackworker enqueue``."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "enqueue"],
        input="\n".join(numbers).encode(),
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise DemoError(f"ackworker enqueue exited with code {done.returncode}: {tail}")


def write_malformed(client: redis.Redis) -> None:
    """XADD the malformed entries raw, bypassing the producer's validation."""
    with client.pipeline(transaction=False) as pipe:
        for fields in MALFORMED:
            pipe.xadd(TASKS, fields)  # type: ignore[arg-type]
        pipe.execute()


# --- running the worker ------------------------------------------------------------------


def _text(value: bytes | None) -> str:
    return (value or b"").decode(errors="replace")


def stream(client: redis.Redis, key: str) -> list[dict[bytes, bytes]]:
    """Every entry's fields of stream ``key``, oldest first."""
    rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
    return [fields for _, fields in rows]


def backlog(client: redis.Redis) -> int:
    """``XLEN`` of the task stream: entries not yet settled."""
    return int(client.xlen(TASKS))  # type: ignore[arg-type]


def run_worker(
    procs: Processes, env: dict[str, str], client: redis.Redis, log: Path, timeout_s: float
) -> float:
    """Run ``ackworker run`` until the backlog is 0, then SIGTERM it; seconds it took."""
    started = time.monotonic()
    proc = procs.start([sys.executable, "-m", "worker", "run"], out=log, env=env)

    def drained() -> bool | None:
        check_alive(proc, "the worker (ackworker run)", log)
        return True if backlog(client) == 0 else None

    poll(drained, timeout_s=timeout_s, what=f"{TASKS} to drain (worker log: {log})")
    busy_s = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DemoError(f"the worker did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM") from None
    if code != 0:
        raise DemoError(f"the worker exited with code {code} after SIGTERM; see {log}")
    return busy_s


def read_events(log: Path) -> list[dict[str, Any]]:
    """The worker's JSON log events, skipping any line that is not one."""
    events: list[dict[str, Any]] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


# --- the summary -------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """What the demo saw; also written as JSON with ``--json-out``."""

    enqueued: dict[str, int]
    stand_in: dict[str, Any]
    worker: dict[str, Any]
    events: dict[str, int]
    dead_by_reason: dict[str, int]
    reconcile_records: int
    shortfall: int
    shortfall_ids: list[str]
    drain_s: float
    elapsed_s: float
    worker_log: str
    problems: list[str]


def summarize(client: redis.Redis, url: str, work: Workload, log: Path, drain_s: float) -> Summary:
    """Collect the outcome from the stand-in, the worker's log and the Redis streams."""
    events = read_events(log)
    stopped = [e for e in events if e["event"] == "worker.stopped"]
    dead = Counter(_text(f.get(b"reason")) for f in stream(client, DEAD))
    records = stream(client, RECONCILE)
    ids = sorted({i for f in records for i in json.loads(_text(f.get(b"ids")) or "[]")})
    return Summary(
        enqueued={
            "seeded": len(work.seeded),
            "duplicates": len(work.duplicates),
            "unknown": len(work.unknown),
            "malformed": len(MALFORMED),
        },
        stand_in=admin_stats(url),
        worker=stopped[-1] if stopped else {},
        events=dict(Counter(e["event"] for e in events)),
        dead_by_reason=dict(dead),
        reconcile_records=len(records),
        shortfall=sum(int(_text(f.get(b"shortfall")) or 0) for f in records),
        shortfall_ids=ids,
        drain_s=drain_s,
        elapsed_s=0.0,
        worker_log=str(log),
        problems=[],
    )


def problems(s: Summary, work: Workload) -> list[str]:
    """The demo's promises that did not hold (empty when all did)."""
    found: list[str] = []
    if s.stand_in.get("confirmed") != len(work.seeded):
        found.append(f"stand-in confirmed {s.stand_in.get('confirmed')} of {len(work.seeded)}")
    if s.worker.get("confirmed") != len(work.seeded):
        found.append(f"worker reports {s.worker.get('confirmed')} confirmed")
    if s.dead_by_reason.get("invalid_id") != len(MALFORMED):
        found.append(f"dead-lettered invalid_id: {s.dead_by_reason.get('invalid_id', 0)}")
    missing = set(work.unknown) - set(s.shortfall_ids)
    if missing:
        found.append(f"{len(missing)} unknown numbers are not in {RECONCILE}")
    entries = len(work.stream_order())
    dead = sum(n for reason, n in s.dead_by_reason.items() if reason != "invalid_id")
    outcomes = [s.worker.get(k) or 0 for k in ("confirmed", "duplicates", "shortfall")]
    if sum(outcomes) + dead != entries:
        found.append(f"{entries} valid entries but {sum(outcomes) + dead} outcomes")
    return found


def render(s: Summary) -> str:
    """The human summary."""
    api, w, n = s.stand_in, s.worker, s.enqueued
    lines = [
        f"enqueued      {n['seeded']} seeded + {n['duplicates']} duplicates + "
        f"{n['unknown']} unknown + {n['malformed']} malformed entries",
        f"confirmed     {api.get('confirmed')} at the stand-in ({api.get('pending')} pending); "
        f"worker.stopped says {w.get('confirmed')}",
        f"duplicates    {w.get('duplicates')} settled without a second confirmation",
        f"dead-lettered {_counts(s.dead_by_reason)}  (XRANGE {DEAD} - +)",
        f"shortfalls    {s.shortfall} numbers in {s.reconcile_records} record(s) "
        f"(XRANGE {RECONCILE} - +)",
        f"requests      {api.get('requests_total')} at the stand-in; error answers "
        f"{_counts(api.get('errors_by_code') or {})}",
        f"retries       {_counts(w.get('retries') or {})}; "
        f"limiter.throttled logged {s.events.get('limiter.throttled', 0)} time(s)",
        f"elapsed       {s.elapsed_s:.1f} s in all; the worker drained the backlog in "
        f"{s.drain_s:.1f} s",
        f"worker log    {s.worker_log}",
    ]
    return "\n".join(lines)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The demo's options; every one has a default."""
    p = argparse.ArgumentParser(
        prog="python -m worker.dev.demo", description=__doc__.splitlines()[0]
    )
    p.add_argument("--count", type=int, default=3000, help="seeded numbers (default 3000)")
    p.add_argument("--duplicates", type=int, default=None, help="default: 5%% of --count")
    p.add_argument("--unknown", type=int, default=20, help="valid numbers the API does not know")
    p.add_argument("--timeout-s", type=float, default=120.0, help="deadline for the drain")
    p.add_argument("--log-dir", type=Path, default=Path(".demo"), help="default: ./.demo")
    p.add_argument("--json-out", type=Path, default=None, help="also write the summary as JSON")
    args = p.parse_args(argv)
    if args.count < 1 or args.unknown < 0 or (args.duplicates or 0) < 0:
        p.error("--count must be at least 1; --duplicates and --unknown not negative")
    return args


def run_demo(args: argparse.Namespace, workdir: Path, procs: Processes) -> Summary:
    """Everything between starting the servers and reading the outcome."""
    started = time.monotonic()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    redis_url = start_redis(procs, workdir)
    print(f"redis-server  {redis_url} (throwaway)", flush=True)
    url, seeded = start_mock_api(procs, workdir, args.log_dir / "mock-api.log", args.count)
    print(f"stand-in      {url}, {len(seeded)} numbers seeded, mild faults", flush=True)
    dupes = args.count // 20 if args.duplicates is None else args.duplicates
    work = Workload.plan(seeded, dupes, args.unknown)
    env = clean_env(
        ACKWORKER_REDIS_URL=redis_url,
        ACKWORKER_ENDPOINT=url,
        ALIBABA_CLOUD_ACCESS_KEY_ID=ACCESS_KEY_ID,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=ACCESS_KEY_SECRET,
        **WORKER_SETTINGS,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        write_malformed(client)
        enqueue(env, work.stream_order())
        print(f"stream        {backlog(client)} entries on {TASKS}; running ackworker run")
        log = (args.log_dir / "worker.log").resolve()
        drain_s = run_worker(procs, env, client, log, args.timeout_s)
        summary = summarize(client, url, work, log, drain_s)
    finally:
        client.close()
    summary.problems = problems(summary, work)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt


def supervise(label: str, run: Callable[[Path, Processes], T], finish: Callable[[T], int]) -> int:
    """``run`` in a scratch directory, every process it starts stopped however it ends, then
    ``finish`` on its result; the exit code (1 when it failed, 130 when interrupted)."""
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix=f"ackworker-{label.replace(' ', '-')}-") as tmp:
        procs = Processes()
        try:
            result = run(Path(tmp), procs)
        except DemoError as exc:
            print(f"{label} failed: {exc}", file=sys.stderr)
            return 1
        except (redis.RedisError, OSError) as exc:
            print(f"{label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{label} interrupted: stopping what it started", file=sys.stderr)
            return 130
        finally:
            _stop_uninterrupted(procs)
    return finish(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the process exit code."""
    args = parse_args(argv)
    return supervise(
        "demo",
        lambda tmp, procs: run_demo(args, tmp, procs),
        lambda summary: report(summary, args.json_out),
    )


def _stop_uninterrupted(procs: Processes) -> None:
    """Stop every child; signals are ignored meanwhile."""
    # A second Ctrl-C must not abandon children halfway; stopping each is bounded anyway.
    previous = (
        signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    try:
        procs.stop_all()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def report(summary: Summary, json_out: Path | None) -> int:
    """Print the summary (and write it as JSON); 0 if every promise held, else 1."""
    ok = "every seeded number confirmed, every bad entry accounted for"
    return conclude("demo", render(summary), asdict(summary), summary.problems, json_out, ok)


def conclude(
    label: str,
    text: str,
    data: dict[str, Any],
    problems: list[str],
    json_out: Path | None,
    ok: str,
) -> int:
    """Print ``text`` (and write ``data`` as JSON to ``json_out``), then the verdict: 0 with
    ``ok`` when there are no ``problems``, else 1 naming them."""
    print(f"\n{text}")
    if json_out is not None:
        json_out.write_text(json.dumps(data, indent=2))
    if problems:
        print(f"{label} failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"{label} ok: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
