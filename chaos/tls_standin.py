"""The stand-in served over TLS, for the certificate checks of the security scenario.

    python -m chaos.tls_standin --port 0 --cert server.pem --key server.key

``ackworker mock-api`` speaks plain HTTP only; this serves the same application
(:func:`worker.dev.mockapi.app.build_app`) through an ``ssl.SSLContext``. Like ``mock-api`` it
prints ``mock-api listening on https://HOST:PORT`` once it listens, serves its admin routes
over the same TLS port, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import ssl
from collections.abc import Sequence

from aiohttp import web

from worker.dev.mockapi.app import MockService, build_app
from worker.dev.mockapi.auth import DEFAULT_CREDENTIALS, Authenticator
from worker.dev.mockapi.faults import FaultInjector
from worker.dev.mockapi.state import TaskStore


async def serve(host: str, port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    service = MockService(
        store=TaskStore(),
        injector=FaultInjector(rng=random.Random(9)),
        verifier=Authenticator([DEFAULT_CREDENTIALS]),
    )
    runner = web.AppRunner(build_app(service), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        bound = runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"mock-api listening on https://{host}:{bound}", flush=True)
        await stop.wait()
    finally:
        service.closing.set()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chaos.tls_standin")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
