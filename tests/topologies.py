"""Real Redis topologies for the tests: TLS with a CA made here, Sentinel, a three-node Cluster.

Every server is a :mod:`worker.dev.sandbox` redis-server on free loopback ports in a
temporary directory, stopped by ``close()``; every wait is on a condition with a deadline,
never a fixed sleep.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import RedisServer, free_port, start_redis, wait_until
from worker.dev import sandbox

MASTER_NAME = "ackworker-primary"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: run 'make setup' (installs redis-server)")
    return path


def _command(port: int, *args: str) -> str:
    """One command on a plain connection; the first line of the answer."""
    out = subprocess.run(
        [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout


def _retrying(start: Callable[[], RedisServer]) -> RedisServer:
    """Start a server, again on another port if the free port was taken meanwhile."""
    return sandbox.retrying(start, attempts=5)


# --- TLS -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A test CA and a server certificate it signed, valid for 127.0.0.1 only."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_ca(workdir: Path) -> TlsFiles:
    """Make a CA and a server key and certificate with openssl (EC P-256, one day)."""
    openssl = _binary("openssl")
    ca_key, ca_cert = workdir / "ca.key", workdir / "ca.crt"
    key, csr, cert = workdir / "server.key", workdir / "server.csr", workdir / "server.crt"
    ext = workdir / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert)]
    _quiet([*run, "-days", "1", "-subj", "/CN=ackworker test CA"])
    _quiet([openssl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=redis"])
    sign = ["-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1"]
    _quiet(
        [openssl, "x509", "-req", "-in", str(csr), *sign, "-out", str(cert), "-extfile", str(ext)]
    )
    return TlsFiles(ca_cert, cert, key)


def _quiet(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class TlsRedis:
    """A redis-server answering TLS on ``tls_port`` with an ACL user; the default user is
    off. Its plain port only serves the start-up check (it answers NOAUTH)."""

    USER = "ackworker"
    PASSWORD = "s3cret-Pa55"

    def __init__(self, workdir: Path) -> None:
        self.tls = make_test_ca(workdir)
        self.tls_port = 0
        self.server = _retrying(self._start_in(workdir))

    def _start_in(self, workdir: Path) -> Callable[[], RedisServer]:
        def start() -> RedisServer:
            self.tls_port = free_port()
            return start_redis(
                free_port(),
                str(workdir),
                *("--tls-port", str(self.tls_port)),
                *("--tls-cert-file", str(self.tls.server_cert)),
                *("--tls-key-file", str(self.tls.server_key)),
                *("--tls-ca-cert-file", str(self.tls.ca_cert)),
                *("--tls-auth-clients", "no"),
                *("--user", "default", "off"),
                *("--user", self.USER, "on", f">{self.PASSWORD}", "~*", "&*", "+@all"),
            )

        return start

    def url(self, *, password: str | None = None, host: str = "127.0.0.1") -> str:
        secret = self.PASSWORD if password is None else password
        return f"rediss://{self.USER}:{secret}@{host}:{self.tls_port}/0"

    def close(self) -> None:
        self.server.stop()


# --- Sentinel ------------------------------------------------------------------------------


class SentinelProcess(sandbox.RedisServer):
    """``redis-server sentinel.conf --sentinel`` watching ``primary_port``."""

    def __init__(self, workdir: Path, primary_port: int, index: int) -> None:
        conf = workdir / f"sentinel-{index}.conf"
        conf.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 400\n"
            f"sentinel failover-timeout {MASTER_NAME} 2000\n"
        )
        super().__init__(workdir, "--sentinel", config=conf)

    def ask(self, *args: str) -> str:
        return _command(self.port, "SENTINEL", *args)

    def primary_port(self) -> int:
        lines = self.ask("get-master-addr-by-name", MASTER_NAME).split()
        return int(lines[1])


class SentinelSetup:
    """A primary, one replica and two Sentinels watching the primary (quorum 1)."""

    def __init__(self, workdir: Path) -> None:
        for name in ("primary", "replica"):
            (workdir / name).mkdir()
        # The primary starts a full sync at once instead of waiting 5 s for more replicas.
        self.primary = _retrying(
            lambda: start_redis(
                free_port(), str(workdir / "primary"), "--repl-diskless-sync-delay", "0"
            )
        )
        self.replica = _retrying(
            lambda: start_redis(
                free_port(),
                str(workdir / "replica"),
                *("--replicaof", "127.0.0.1", str(self.primary.port)),
            )
        )
        self.sentinels: list[SentinelProcess] = []
        try:
            wait_until(self._replica_in_sync, timeout_s=10, what="replica in sync")
            for index in range(2):
                self.sentinels.append(SentinelProcess(workdir, self.primary.port, index))
            wait_until(self._sentinels_agree, timeout_s=10, what="sentinels see each other")
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> str:
        """``ACKWORKER_REDIS_SENTINELS`` for this setup."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def _replica_in_sync(self) -> bool:
        return "master_link_status:up" in _command(self.replica.port, "INFO", "replication")

    def _sentinels_agree(self) -> bool:
        # Each must know the other (to elect a leader for a failover) and the replica.
        for sentinel in self.sentinels:
            info = sentinel.ask("master", MASTER_NAME).split()
            state = dict(zip(info[::2], info[1::2], strict=False))
            if state.get("num-other-sentinels") != "1" or state.get("num-slaves") != "1":
                return False
        return True

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()


# --- Cluster -------------------------------------------------------------------------------


class ClusterSetup:
    """Three primaries (no replicas) joined by ``redis-cli --cluster create``.

    Each node keeps an append-only file and its cluster config in its own directory, so
    :meth:`restart` brings the same cluster back with its data, as after a power cut.
    """

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                self.nodes.append(_retrying(lambda: self._node(free_port())))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            create = [_binary("redis-cli"), "--cluster", "create", *addresses]
            _quiet([*create, "--cluster-replicas", "0", "--cluster-yes"])
            wait_until(self._ok, timeout_s=20, what="cluster_state:ok on every node")
        except BaseException:
            self.close()
            raise

    def _node(self, port: int) -> RedisServer:
        home = self._workdir / f"node-{port}"
        home.mkdir(exist_ok=True)
        return start_redis(
            port,
            str(home),
            *("--appendonly", "yes"),
            *("--cluster-enabled", "yes"),
            *("--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", "1000"),
        )

    def restart(self) -> None:
        """Stop every node (the whole cluster is down), start them again on the same ports
        and directories and wait until the cluster serves every slot."""
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            node.restart()
        wait_until(self._ok, timeout_s=20, what="cluster_state:ok after the restart")

    def _ok(self) -> bool:
        return all(
            "cluster_state:ok" in _command(node.port, "CLUSTER", "INFO") for node in self.nodes
        )

    def url_of(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.nodes[index].port}/0"

    def owner_of(self, key: str) -> int:
        """Index of the node serving ``key``'s slot (from ``CLUSTER NODES``)."""
        slot = int(_command(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))
        for line in _command(self.nodes[0].port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rpartition(":")[2])
            for span in fields[8:]:
                first, _, last = span.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return [node.port for node in self.nodes].index(port)
        raise AssertionError(f"no node serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
