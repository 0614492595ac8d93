"""The enclave's socket server, in front of the batcher: it takes the host's connections as they come."""

from __future__ import annotations

import socket
import socketserver
from pathlib import Path

import pytest

from enclave_infer.config import EnclaveConfig, Limits
from enclave_infer.enclave import server
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.errors import ProtocolError
from enclave_infer.protocol import framing
from enclave_infer.protocol.api import Problem
from enclave_infer.protocol.framing import FrameType


def test_connections_opened_at_once_all_get_in(tmp_path: Path) -> None:
    """The host opens one connection per request; many at once must wait in the backlog, not be
    reset (socketserver's default backlog of 5 reset the rest)."""
    path = tmp_path / "enclave.sock"
    listener = server._UnixServer(str(path), socketserver.StreamRequestHandler)  # never accepts
    clients: list[socket.socket] = []
    try:
        for _ in range(4 * Limits().max_concurrent_requests):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.settimeout(5)  # a full backlog makes a blocking connect wait: this would time out
            client.connect(str(path))
            client.sendall(b"\x00")
    finally:
        for client in clients:
            client.close()
        listener.server_close()


# -- the frame table (protocol/framing.py's REQUESTS) drives what the enclave answers -----------------


def _enclave(tmp_path: Path, *, shared: bool = False) -> server.Enclave:
    config = EnclaveConfig(owner_public_key=bytes(32))
    folder = tmp_path / "shared"
    folder.mkdir(exist_ok=True)
    return server.Enclave(
        config, SimulationPlatform(config), tmp_path / "sealed", shared=folder if shared else None
    )


def _kind(reply: bytes) -> FrameType:
    return framing.parse_header(reply[: framing.HEADER.size])[0]


def test_every_reply_type_answers_one_request_and_status_answers_only_status() -> None:
    replies = [
        spec.reply for spec in framing.REQUESTS.values() if spec.reply is not FrameType.CLUSTER_MESSAGE
    ]
    assert len(replies) == len(set(replies))  # no reply type reused as several acknowledgements
    assert all(reply >= 0x80 for reply in replies) and all(kind < 0x80 for kind in framing.REQUESTS)
    framing.check_reply(FrameType.GET_STATUS, FrameType.STATUS)
    framing.check_reply(FrameType.CLUSTER_RELOAD, FrameType.ERROR)
    for request in (FrameType.SET_COLLATERAL, FrameType.CLUSTER_ACCEPT, FrameType.CLUSTER_FOUND):
        with pytest.raises(ProtocolError):
            framing.check_reply(request, FrameType.STATUS)
    with pytest.raises(ProtocolError):
        framing.check_reply(FrameType.STATUS, FrameType.STATUS)  # not a request


def test_the_enclave_answers_each_request_with_its_rows_reply(tmp_path: Path) -> None:
    enclave = _enclave(tmp_path)
    assert _kind(enclave.answer(FrameType.GET_KEYS, b"")) is FrameType.KEYS
    assert _kind(enclave.answer(FrameType.GET_STATUS, b"")) is FrameType.STATUS
    assert _kind(enclave.answer(FrameType.GET_EVIDENCE, bytes(32))) is FrameType.EVIDENCE
    assert enclave.answer(FrameType.SET_COLLATERAL, b"") == framing.encode_frame(FrameType.COLLATERAL_SET)
    # not requests, or requests over their row's cap, or a cluster frame to an enclave alone: ERROR
    for kind, payload in (
        (FrameType.STATUS, b""),
        (FrameType.CHUNKED_DATA, b""),
        (FrameType.GET_KEYS, b"x"),
        (FrameType.CLUSTER_FOUND, framing.encode_cluster_payload(b"")),
    ):
        assert _kind(enclave.answer(kind, payload)) is FrameType.ERROR, kind


@pytest.mark.parametrize("kind", [kind for kind, spec in framing.REQUESTS.items() if spec.joined])
def test_a_member_not_yet_joined_refuses_what_its_row_says(tmp_path: Path, kind: FrameType) -> None:
    enclave = _enclave(tmp_path, shared=True)
    reply = enclave.refusal(kind)
    assert reply is not None
    assert framing.decode_problem(reply[framing.HEADER.size :]).problem is Problem.ENCLAVE_UNAVAILABLE
    for other, spec in framing.REQUESTS.items():
        if not spec.joined:
            assert enclave.refusal(other) is None, other
