"""LocalBroker.start must not mistake another listener on its port for the broker it started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgepose.errors import EdgeposeError
from edgepose.localbroker import LocalBroker, mosquitto_binary


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_start_fails_when_another_process_holds_the_port(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        broker = LocalBroker(port=squatter.getsockname()[1], workdir=tmp_path / "broker")
        with pytest.raises(EdgeposeError, match="did not start on port"):
            broker.start()
        broker.stop()
