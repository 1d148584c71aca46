"""``ackworker status``: what the fleet is doing, read from Redis without changing anything.

One snapshot holds the backlog (``XLEN``), what consumers hold (``XPENDING``, ``XINFO
CONSUMERS``), the dead letters by reason and the reconcile records with their shortfall
(tallied inside Redis, page by page, at most :data:`~worker.commands.common.SCAN_CAP`
entries each), the shared rate limit read from ``<prefix>:limiter`` against Redis's clock,
and the live workers from their heartbeats, which also say whether a worker has stopped
sending because the API refused its credentials or clock, and how many API requests of each
action it has sent: summed, they give the fleet's requests per confirmed number.
:func:`collect_status` returns the stable JSON form that ``--json`` prints; the table is
rendered from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from worker.commands.common import (
    print_json,
    render_table,
    run_with_redis,
    tally_stream,
)
from worker.config.settings import Settings
from worker.entries import DEFAULT_ACCOUNT
from worker.observe.cost import fleet_requests, read_requests
from worker.store.connection import RedisClient, redis_now_ms
from worker.store.heartbeat import read_beats
from worker.store.keys import Keys
from worker.totals import ACKNOWLEDGE, POLL


async def collect_status(
    redis: RedisClient,
    keys: Keys,
    limits: Mapping[str, float],
) -> dict[str, Any]:
    """The status snapshot; ``limits`` is every account's configured ``rate_limit`` by name,
    the default account's included (``rate_limit`` also appears per account, default first)."""
    rates = {
        name: await _rate_limit(redis, keys.limiter_for(name), rps) for name, rps in limits.items()
    }
    if len(limits) > 1:
        # Several accounts: the router moves the input's entries to each account's stream.
        for name, section in rates.items():
            section["backlog"] = int(await redis.xlen(keys.account_stream(name)))
            section["pending"] = (await _pending(redis, keys.for_account(name)))[0]["count"]
    pending, consumers = await _pending(redis, keys)
    workers = await _workers(redis, keys)
    return {
        "key_prefix": keys.prefix,
        "backlog": int(await redis.xlen(keys.tasks)),
        "pending": pending,
        "consumers": consumers,
        "dead": await _dead(redis, keys),
        "reconcile": await _reconcile(redis, keys),
        "rate_limit": rates[DEFAULT_ACCOUNT],
        "accounts": rates,
        "sending_paused": [
            {"consumer": w["consumer"], "problem": w["paused"]} for w in workers if w["paused"]
        ],
        "requests": fleet_requests(workers),
        "workers": workers,
    }


async def _workers(redis: RedisClient, keys: Keys) -> list[dict[str, Any]]:
    """Each live heartbeat's JSON form, with the worker's requests since start by action."""
    beats = await read_beats(redis, keys)
    requests = await read_requests(redis, keys, [b.consumer for b in beats])
    return [
        {**b.as_json(), "requests_by_action": by_action}
        for b, by_action in zip(beats, requests, strict=True)
    ]


async def _pending(redis: RedisClient, keys: Keys) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pending: dict[str, Any] = {"count": 0, "oldest_id": None, "oldest_idle_ms": None}
    try:
        summary: Any = await redis.xpending(keys.tasks, keys.group)
        oldest: Any = await redis.xpending_range(keys.tasks, keys.group, "-", "+", 1)
        infos: Any = await redis.xinfo_consumers(keys.tasks, keys.group)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        return pending, []  # no worker or producer has created the stream yet
    pending["count"] = int(summary["pending"])
    if oldest:
        pending["oldest_id"] = oldest[0]["message_id"].decode()
        pending["oldest_idle_ms"] = int(oldest[0]["time_since_delivered"])
    consumers = [
        {"name": _text(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
        for c in infos
    ]
    return pending, consumers


async def _dead(redis: RedisClient, keys: Keys) -> dict[str, Any]:
    tally = await tally_stream(redis, keys.dead, "reason")
    by_account = await tally_stream(redis, keys.dead, "account")
    return {
        "total": int(await redis.xlen(keys.dead)),
        "by_reason": dict(sorted(tally.by_value.items())),
        # Dead letters of invalid entries carry no account: counted under "".
        "by_account": dict(sorted(by_account.by_value.items())),
        "scanned": tally.scanned,
        "capped": tally.capped,
    }


async def _reconcile(redis: RedisClient, keys: Keys) -> dict[str, Any]:
    tally = await tally_stream(redis, keys.reconcile, "kind", ("shortfall", "overcount"))
    return {
        "total": int(await redis.xlen(keys.reconcile)),
        "by_kind": dict(sorted(tally.by_value.items())),
        "shortfall": tally.sums["shortfall"],
        "overcount": tally.sums["overcount"],
        "scanned": tally.scanned,
        "capped": tally.capped,
    }


async def _rate_limit(redis: RedisClient, key: str, limit_rps: float) -> dict[str, Any]:
    """The limiter hash ``key`` as it stands; times are µs on Redis's clock (see
    worker.store.limiter)."""
    now_us = await redis_now_ms(redis, key) * 1000
    reply: Any = redis.hmget(
        key, ["tat", "rate", "updated", "last_cut", "down", "probes", "probe_at"]
    )
    raw: list[bytes | None] = await reply
    tat, rate, updated, last_cut, down, probes, probe_at = (float(x) if x else None for x in raw)
    return {
        "limit_rps": limit_rps,
        # The rate as of the fleet's last request (the workers' limit may differ from this
        # command's); without throttling it climbs back to the limit as requests go out.
        "effective_rps": round(rate, 3) if rate is not None else limit_rps,
        # The fleet's next free slot is this far ahead: a pause after throttling, or slots
        # already reserved by requests about to go.
        "pause_s": round(max(0.0, (tat or 0.0) - now_us) / 1e6, 3),
        "updated_s_ago": _ago_s(updated, now_us),
        "throttled_s_ago": _ago_s(last_cut or None, now_us),
        # The endpoint is away: the fleet sends nothing but one probe at a time.
        "outage": None
        if not down
        else {
            "since_s_ago": _ago_s(down, now_us),
            "probes": int(probes or 0),
            "next_probe_in_s": round(max(0.0, (probe_at or 0.0) - now_us) / 1e6, 3),
        },
    }


def _ago_s(at_us: float | None, now_us: int) -> float | None:
    return None if at_us is None else round(max(0.0, now_us - at_us) / 1e6, 3)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _counts(by: dict[str, int]) -> str:
    return ", ".join(f"{k or '(none)'} {v}" for k, v in by.items())


def _capped(section: dict[str, Any]) -> str:
    return f" (counted the first {section['scanned']} only)" if section["capped"] else ""


def _overview(s: dict[str, Any]) -> list[tuple[str, str]]:
    p, d, r = s["pending"], s["dead"], s["reconcile"]
    oldest = "" if p["oldest_id"] is None else f", oldest {p['oldest_id']} idle {_secs(p)}"
    dead = f"{d['total']}" + (f": {_counts(d['by_reason'])}" if d["total"] else "")
    paused = ", ".join(f"{x['consumer']} ({x['problem']})" for x in s["sending_paused"])
    return [
        ("backlog", f"{s['backlog']} entries in {s['key_prefix']}:tasks"),
        ("pending", f"{p['count']}{oldest}"),
        ("dead letters", dead + _capped(d)),
        (
            "reconcile",
            f"{r['total']} record(s), shortfall {r['shortfall']}, overcount {r['overcount']}"
            + _capped(r),
        ),
        *_rate_lines(s["accounts"]),
        ("sending", f"paused on {paused}" if paused else "not paused by any live worker"),
        ("requests", _requests_line(s["requests"])),
        ("workers", f"{len(s['workers'])} live"),
    ]


def _requests_line(r: dict[str, Any]) -> str:
    """Requests and what each confirmed number cost, since the live workers started."""
    per = r["per_confirmed"]
    cost = "none confirmed yet" if per is None else f"{per} per confirmed number"
    return f"{r['total']} ({_counts(r['by_action'])}) by the live workers since start; {cost}"


def _rate_lines(accounts: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """One ``rate limit`` line, or one per account (with its backlog) when there are several."""
    lines = []
    for name, rl in accounts.items():
        throttled = rl["throttled_s_ago"]
        label = "rate limit" if len(accounts) == 1 else f"rate {name}"
        text = (
            f"limit {rl['limit_rps']}/s, effective {rl['effective_rps']}/s, next free slot in "
            f"{rl['pause_s']}s, last throttled "
            + ("never" if throttled is None else f"{throttled}s ago")
        )
        if "backlog" in rl:
            text = f"backlog {rl['backlog']} ({rl['pending']} pending), " + text
        lines.append((label, text))
        outage = rl["outage"]
        if outage is not None:
            lines.append(
                (
                    "outage" if len(accounts) == 1 else f"outage {name}",
                    f"endpoint away for {outage['since_s_ago']}s: sending paused fleet-wide, "
                    f"{outage['probes']} probe(s) so far, next in {outage['next_probe_in_s']}s",
                )
            )
    return lines


def _secs(p: dict[str, Any]) -> str:
    return f"{p['oldest_idle_ms'] / 1000:.1f}s"


def render_status(s: dict[str, Any]) -> str:
    """The readable form: an overview, then the consumers and the live workers."""
    parts = ["\n".join(f"{name:<13} {text}" for name, text in _overview(s))]
    if s["consumers"]:
        consumers = [
            (c["name"], c["pending"], f"{c['idle_ms'] / 1000:.1f}s") for c in s["consumers"]
        ]
        parts.append("consumers\n" + render_table(("name", "pending", "idle"), consumers))
    if s["workers"]:
        columns = ("consumer", "host", "pid", "state", "beat", "paused", "confirmed", "dead")
        headers = (*columns, "ack reqs", "poll reqs")
        workers = [_worker_row(w) for w in s["workers"]]
        parts.append("workers\n" + render_table(headers, workers))
    return "\n\n".join(parts)


def _worker_row(w: dict[str, Any]) -> tuple[object, ...]:
    beat = f"{w['age_s']:.1f}s ago"
    paused = w["paused"] or "-"
    requests = w["requests_by_action"]
    row = (w["consumer"], w["host"], w["pid"], w["state"], beat, paused, w["confirmed"], w["dead"])
    return (*row, requests[ACKNOWLEDGE], requests[POLL])


def status_command(settings: Settings, *, as_json: bool) -> int:
    """``ackworker status [--json]``."""

    async def main(redis: RedisClient, keys: Keys) -> int:
        limits = {name: account.rate_limit for name, account in settings.all_accounts.items()}
        snapshot = await collect_status(redis, keys, limits)
        if as_json:
            print_json(snapshot)
        else:
            print(render_status(snapshot))
        return 0

    return run_with_redis(settings, main)
