"""An MQTT 3.1.1 broker in pure Python (amqtt), for `make run` and `make test` on a machine without
mosquitto. Development only: the daemon never starts a broker, and production uses the user's.

    python -m edgepose.embedded_broker --port 1883

Listens on 127.0.0.1 only, anonymous, no persistence; stops on SIGTERM/SIGINT. amqtt speaks MQTT
3.1.1 (it refuses a v5 CONNECT with "unsupported protocol version"), which is what the daemon uses
unless told otherwise; tests that need v5 are skipped under it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "amqtt"


def available() -> str | None:
    """amqtt's version when it is installed, else None."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"embedded MQTT broker (amqtt {available()}) on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgepose.embedded_broker", description=__doc__)
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    if available() is None:
        print("edgepose: error: amqtt is not installed: pip install 'edgepose[dev]'", file=sys.stderr)
        return 69
    # amqtt logs every connection at INFO; a test run or `make run` wants only its problems.
    logging.basicConfig(level=logging.WARNING, format="broker: %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.port))
    except OSError as exc:
        print(
            f"edgepose: error: embedded broker cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 69
    return 0


if __name__ == "__main__":
    sys.exit(main())
