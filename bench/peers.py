"""Scenario ``peers``: ackworker against what a user would write with the official SDK.

Same stand-in (no latency, no quota), same numbers, a fresh Redis and stand-in for each
contestant: ackworker (rate limit 100000, batch 100, 8 in flight) drains the stream; the
peers of :mod:`bench.sdk_peers` pop the same numbers from a list: (a) ``one`` number per
call, bounded by ``--peer-a-s`` seconds since it is slow, (b) ``batch`` of 100 sequentially,
(c) ``async``, 8 in flight. Ratios are ackworker ÷ peer within the run: items/s above 1 is
ackworker faster; CPU per request below 1 is ackworker cheaper. ackworker's numbers are
after its start-up (first to last settle), as the peers time only their loop.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.contestants import WorkerConfig, ackworker_args, admin_stats, measure
from bench.data import fill_list, fill_stream, make_ids, write_seed_file
from bench.measure import ratio
from bench.procs import PYTHON, BenchError, Stack, clean_env, stack
from bench.scenario import Numbers, Options, Row

NAME = "peers"
WORKER = WorkerConfig(rate_limit=100_000, batch_size=100, concurrency=8)
PEERS = {"a": "one", "b": "batch", "c": "async"}
ROWS = (
    Row("ackworker items/s (first to last settle)", ("ackworker", "steady_items_per_s")),
    Row("ackworker CPU µs per request", ("ackworker", "cpu_us_per_request"), "", 1),
    Row("(a) SDK one per call: items/s", ("a", "items_per_s"), "", 1),
    Row("(a) CPU µs per request", ("a", "cpu_us_per_request"), "", 1),
    Row("(b) SDK 100 per call, sequential: items/s", ("b", "items_per_s")),
    Row("(b) CPU µs per request", ("b", "cpu_us_per_request"), "", 1),
    Row("(c) SDK async, 8 in flight: items/s", ("c", "items_per_s")),
    Row("(c) CPU µs per request", ("c", "cpu_us_per_request"), "", 1),
    Row("ackworker ÷ (a), items/s", ("ratios", "a", "items_per_s"), "≥ 50", 1),
    Row("ackworker ÷ (b), items/s", ("ratios", "b", "items_per_s"), "", 2),
    Row("ackworker ÷ (c), items/s", ("ratios", "c", "items_per_s"), "", 2),
    Row("ackworker ÷ (a), CPU per item", ("ratios", "a", "cpu_per_item"), "", 4),
    Row("ackworker ÷ (b), CPU per request", ("ratios", "b", "cpu_per_request"), "≤ 0.2", 3),
    Row("ackworker ÷ (c), CPU per request", ("ratios", "c", "cpu_per_request"), "≤ 0.2", 3),
)


def run_peer(s: Stack, mode: str, max_s: float) -> Numbers:
    """Run one SDK peer until the list is empty or ``max_s``; its numbers."""
    name = f"sdk-{mode}"
    args = [PYTHON, "-m", "bench.sdk_peers", mode, "--redis-url", s.redis_url]
    args += ["--endpoint", s.endpoint, "--max-s", f"{max_s:g}"]
    peer = s.procs.start(name, args, clean_env())
    code = peer.wait_exit(max_s + 60)
    lines = peer.output().strip().splitlines()
    if code != 0 or not lines:
        raise BenchError(f"{name} exited with {code}: {peer.tail()}")
    tally: Numbers = json.loads(lines[-1])
    return {**tally, **_rates(tally), "stand_in_confirmed": admin_stats(s.api_url)["confirmed"]}


def _rates(tally: Numbers) -> Numbers:
    return {
        "items_per_s": ratio(tally["items"], tally["wall_s"]),
        "cpu_us_per_item": ratio(tally["cpu_s"] * 1e6, tally["items"]),
        "cpu_us_per_request": ratio(tally["cpu_s"] * 1e6, tally["requests"]),
    }


def check_peer(name: str, peer: Numbers) -> None:
    """Every number a peer sent was confirmed, and nothing went wrong."""
    if peer["errors"] or peer["confirmed"] != peer["items"]:
        raise BenchError(f"peer {name}: {peer['errors']} errors, {peer['confirmed']} confirmed")
    if peer["stand_in_confirmed"] != peer["items"]:
        raise BenchError(f"peer {name}: the stand-in confirmed {peer['stand_in_confirmed']}")


def run_ackworker(s: Stack, count: int) -> Numbers:
    """ackworker on the same numbers, with its CPU per request after start-up."""
    numbers = measure(s, "ackworker", ackworker_args(), WORKER.env(s), timeout_s=60 + count / 1000)
    per_request = numbers["items"] / max(1, numbers["requests"])
    numbers["cpu_us_per_request"] = numbers["cpu_us_per_item_steady"] * per_request
    return numbers


def ratios(ack: Numbers, peer: Numbers) -> Numbers:
    """ackworker ÷ peer for throughput and CPU."""
    return {
        "items_per_s": ratio(ack["steady_items_per_s"], peer["items_per_s"]),
        "cpu_per_item": ratio(ack["cpu_us_per_item_steady"], peer["cpu_us_per_item"]),
        "cpu_per_request": ratio(ack["cpu_us_per_request"], peer["cpu_us_per_request"]),
    }


def run_once(opts: Options, workdir: Path, index: int) -> Numbers:
    """One run: ackworker, then each peer, on the same numbers."""
    ids = make_ids(opts.peers_n)
    seed = write_seed_file(workdir / "seed.txt", ids)
    result: Numbers = {"n": len(ids)}
    with stack(workdir / "ackworker", seed) as s:
        fill_stream(s.redis, ids)
        result["ackworker"] = run_ackworker(s, len(ids))
    for key, mode in PEERS.items():
        with stack(workdir / mode, seed) as s:
            fill_list(s.redis, ids)
            max_s = opts.peer_a_s if mode == "one" else 60 + len(ids) / 100
            result[key] = run_peer(s, mode, max_s)
            check_peer(key, result[key])
    result["ratios"] = {key: ratios(result["ackworker"], result[key]) for key in PEERS}
    result["settings"] = {"worker": WORKER.as_dict(), "peer_a_max_s": opts.peer_a_s}
    return result
