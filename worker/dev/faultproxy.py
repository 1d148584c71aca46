"""A fault-injecting TCP proxy between a Redis client and redis-server, for tests and chaos.

Each chunk a client sends is one request (redis-py writes a command or pipeline at once, then
waits for the reply). Its fault is decided as it is forwarded and hits the first reply bytes:
``drop`` (the command ran; the reply is discarded and both connections close), ``cut`` (half
the reply chunk, then both close) or ``stall`` (the reply is held ``stall_ms`` ms). Faults
strike with seeded probabilities (:class:`Faults`) or once, on the next request containing
some bytes (:meth:`FaultProxy.next`: "drop the reply to the next EVALSHA"). ``refuse``
closes the listener and every connection, and listens on the same port once cleared;
``reset`` closes every connection and resets each new one as it is accepted. Bounded:
``max_connections`` at a time (more are reset), one ``CHUNK_BYTES`` chunk in hand per
direction and connection.

In-process: ``async with fault_proxy(host, port) as proxy``. A child process,
``python -m worker.dev.faultproxy --target HOST:PORT``, prints ``faultproxy listening on
HOST:PORT admin HOST:PORT``; each connection to the admin port sends one JSON line,
``{"faults": {...}, "next": [{"action": "drop", "match": "EVALSHA"}]}`` (both optional),
and gets one line back with the counters (:func:`control` is the client).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from worker.logs import get_logger

log = get_logger("faultproxy")

CHUNK_BYTES = 65_536
MAX_CONNECTIONS = 128
_ADMIN_LINE_BYTES = 65_536
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

Action = Literal["drop", "cut", "stall"]  # what happens to one reply


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults in force; probabilities are per request, drawn from the proxy's seeded rng."""

    drop_p: float = 0.0
    cut_p: float = 0.0
    stall_p: float = 0.0
    stall_ms: float = 0.0
    """How long a stalled reply is held, in milliseconds."""
    only: str = ""
    """When set, probabilistic faults strike only requests whose bytes contain it."""
    refuse: bool = False
    reset: bool = False

    def __post_init__(self) -> None:
        if min(self.drop_p, self.cut_p, self.stall_p, self.stall_ms) < 0:
            raise ValueError("fault probabilities and stall_ms must not be negative")
        if self.drop_p + self.cut_p + self.stall_p > 1:
            raise ValueError("drop_p + cut_p + stall_p must be at most 1")


@dataclass(slots=True)
class ProxyStats:
    """Counters since the proxy started."""

    connections: int = 0
    requests: int = 0
    dropped: int = 0
    cut: int = 0
    stalled: int = 0
    reset: int = 0
    refused_periods: int = 0


@dataclass(eq=False, slots=True)
class _Link:
    """One client connection: the action decided for the reply it awaits."""

    pending: Action | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class FaultProxy:
    """Forwards ``listen`` (host, port; port 0: a free one) to ``target``; see the module doc."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int = 0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.target = target
        self.host, self.port = listen
        self.faults = Faults()
        self.stats = ProxyStats()
        self.max_connections = max_connections
        self._rng = random.Random(seed)
        self._shots: list[tuple[bytes, Action]] = []  # one entry per request it strikes
        self._links: set[_Link] = set()
        self._changed = anyio.Event()
        self._listening = anyio.Event()
        self._listen_scope = anyio.CancelScope()

    @property
    def url(self) -> str:
        """``redis://<host>:<port>/0``: where a client reaches Redis through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    def set(self, **changes: Any) -> Faults:
        """Change the faults in force (names of :class:`Faults`); returns the new faults."""
        before, self.faults = self.faults, dataclasses.replace(self.faults, **changes)
        if self.faults.refuse and not before.refuse:
            self.stats.refused_periods += 1
            self._listening = anyio.Event()
            self._listen_scope.cancel()
        if (self.faults.refuse and not before.refuse) or (self.faults.reset and not before.reset):
            # Whatever the client holds open goes too: the way to the target is gone.
            for link in list(self._links):
                link.scope.cancel()
        log.info("faultproxy.faults", **dataclasses.asdict(self.faults))
        self._changed.set()
        self._changed = anyio.Event()
        return self.faults

    def next(self, action: str, match: bytes | str, count: int = 1) -> None:
        """Apply ``action`` to the next ``count`` requests containing ``match`` (exact bytes,
        e.g. ``EVALSHA``); one-shots are checked before the probabilistic faults."""
        if action not in get_args(Action):
            raise ValueError(f"action must be one of {get_args(Action)}, not {action!r}")
        raw = match.encode() if isinstance(match, str) else match
        self._shots += [(raw, cast(Action, action))] * count

    async def wait_listening(self) -> None:
        """Return once the proxy accepts connections (after a refusal: once it listens again)."""
        await self._listening.wait()

    async def serve(self, task_group: TaskGroup) -> None:
        """Listen (and listen again after each refusal) until cancelled; connections are
        served in ``task_group``."""
        while True:
            while self.faults.refuse:
                await self._changed.wait()
            listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
            self.port = int(listener.extra(SocketAttribute.local_port))
            async with listener:
                with anyio.CancelScope() as self._listen_scope:
                    self._listening.set()
                    log.info("faultproxy.listening", port=self.port, target=self.target)
                    await listener.serve(self._handle, task_group)

    async def _handle(self, client: SocketStream) -> None:
        link = _Link()
        async with client:
            if self.faults.reset or len(self._links) >= self.max_connections:
                self.stats.reset += 1
                # SO_LINGER 0 makes the close a reset (RST), not an orderly FIN.
                sock = client.extra(SocketAttribute.raw_socket)
                return sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.stats.connections += 1
            self._links.add(link)
            # Redis away (OSError): the client sees its connection closed, as from Redis.
            with link.scope, suppress(OSError):
                upstream = await anyio.connect_tcp(*self.target)
                async with upstream, anyio.create_task_group() as tg:
                    tg.start_soon(self._requests, client, upstream, link)
                    await self._replies(upstream, client, link)
                    link.scope.cancel()  # either side gone: both close
            self._links.discard(link)

    async def _requests(self, client: SocketStream, upstream: SocketStream, link: _Link) -> None:
        with suppress(*_GONE):
            while True:
                data = await client.receive(CHUNK_BYTES)
                self.stats.requests += 1
                if link.pending is None:
                    link.pending = self._decide(data)
                await upstream.send(data)
        link.scope.cancel()

    async def _replies(self, upstream: SocketStream, client: SocketStream, link: _Link) -> None:
        with suppress(*_GONE):
            while True:
                data = await upstream.receive(CHUNK_BYTES)
                action, link.pending = link.pending, None
                if action == "drop":
                    self.stats.dropped += 1
                    return
                if action == "cut":
                    self.stats.cut += 1
                    await client.send(data[: max(1, len(data) // 2)])
                    return
                if action == "stall":
                    self.stats.stalled += 1
                    await anyio.sleep(self.faults.stall_ms / 1000)
                await client.send(data)

    def _decide(self, data: bytes) -> Action | None:
        for i, (match, action) in enumerate(self._shots):
            if match in data:
                del self._shots[i]
                return action
        f = self.faults
        if f.only and f.only.encode() not in data:
            return None
        draw = self._rng.random()
        if draw < f.drop_p:
            return "drop"
        if draw < f.drop_p + f.cut_p:
            return "cut"
        return "stall" if draw < f.drop_p + f.cut_p + f.stall_p else None


@asynccontextmanager
async def fault_proxy(host: str, port: int, *, seed: int = 0) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` to Redis at ``host:port``, listening when the block starts and
    stopped (every connection closed) when it ends."""
    proxy = FaultProxy((host, port), seed=seed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(proxy.serve, tg)
        await proxy.wait_listening()
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


# --- as a child process -------------------------------------------------------------------


def apply(proxy: FaultProxy, request: dict[str, Any]) -> dict[str, Any]:
    """Apply one admin request (``faults`` changes, ``next`` one-shots); the counters."""
    if request.get("faults"):
        proxy.set(**request["faults"])
    for shot in request.get("next", []):
        proxy.next(shot["action"], shot["match"], int(shot.get("count", 1)))
    return {"port": proxy.port, **dataclasses.asdict(proxy.stats)}


async def _admin_session(proxy: FaultProxy, stream: SocketStream) -> None:
    """One request a connection; a client gone early is no error."""
    buffered = b""
    async with stream:
        with suppress(*_GONE):
            while b"\n" not in buffered and len(buffered) < _ADMIN_LINE_BYTES:
                buffered += await stream.receive(4096)
            try:
                answer = apply(proxy, json.loads(buffered.split(b"\n", 1)[0]))
            except (ValueError, TypeError, KeyError) as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            await stream.send(json.dumps(answer).encode() + b"\n")


async def _main(args: argparse.Namespace) -> None:
    proxy = FaultProxy(args.target, listen=args.listen, seed=args.seed)
    admin = await anyio.create_tcp_listener(local_host=args.admin[0], local_port=args.admin[1])
    async with admin, anyio.create_task_group() as tg:
        tg.start_soon(proxy.serve, tg)
        await proxy.wait_listening()
        at = f"{args.admin[0]}:{admin.extra(SocketAttribute.local_port)}"
        print(f"faultproxy listening on {proxy.host}:{proxy.port} admin {at}", flush=True)
        await admin.serve(lambda stream: _admin_session(proxy, stream), tg)


def control(admin: tuple[str, int], request: dict[str, Any], timeout_s: float = 5.0) -> Any:
    """Send one admin request to a proxy process at ``admin``; its answer (the counters)."""
    with socket.create_connection(admin, timeout=timeout_s) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as answers:
            answer = json.loads(answers.readline(_ADMIN_LINE_BYTES))
    if "error" in answer:
        raise ValueError(answer["error"])
    return answer


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> None:
    """The child process; ``--listen`` and ``--admin`` default to free ports on 127.0.0.1."""
    parser = argparse.ArgumentParser(prog="faultproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=_address, required=True, help="redis-server HOST:PORT")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT")
    parser.add_argument("--admin", type=_address, default=("127.0.0.1", 0), help="HOST:PORT")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    anyio.run(_main, parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
