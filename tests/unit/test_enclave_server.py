"""The enclave's socket server, in front of the batcher: it takes the host's connections as they come."""

from __future__ import annotations

import socket
import socketserver
import threading
from email.utils import formatdate
from pathlib import Path

import pytest

from enclave_infer.attestation.evidence import Verifier
from enclave_infer.config import EnclaveConfig, Limits
from enclave_infer.enclave import server
from enclave_infer.enclave.limits import ServerLimits
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.errors import ProtocolError
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.protocol import bhttp, chunked_ohttp, framing, ohttp
from enclave_infer.protocol.api import INNER_AUTHORITY, INNER_SCHEME, Problem
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
        config,
        SimulationPlatform(config),
        tmp_path / "sealed",
        shared=folder if shared else None,
        verifier=Verifier.production(),
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


# -- streams (chunked uploads) never stall classifications ---------------------------------------------


def _read_frame(sock: socket.socket) -> tuple[FrameType, bytes] | None:
    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            more = sock.recv(n - len(data))
            if not more:
                return None
            data += more
        return data

    header = exactly(framing.HEADER.size)
    if header is None:
        return None
    kind, length = framing.parse_header(header)
    payload = exactly(length)
    assert payload is not None
    return kind, payload


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a request stuck behind the streams would wait a minute (their idle limit)
    sock.connect(str(path))
    return sock


def _inner(method: str, path: str, headers: tuple[tuple[str, str], ...] = (), content: bytes = b"") -> bytes:
    return bhttp.encode_request(
        bhttp.Request(
            method,
            INNER_SCHEME,
            INNER_AUTHORITY,
            path,
            (("date", formatdate(usegmt=True)), *headers),
            content,
        )
    )


def test_trickled_streams_to_the_public_key_do_not_stop_classifications(tmp_path: Path) -> None:
    """An attacker with the public key only opens more streams than the enclave has work slots and
    trickles them: a real enclave process still answers classifications (before, each stream held a
    work slot, and the classification waited as long as they trickled)."""
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    process = EnclaveProcess(config, tmp_path / "data", platform="simulation")
    process.start()
    streams: list[socket.socket] = []
    try:
        with _connect(process.socket_path) as keys:
            keys.sendall(framing.encode_frame(FrameType.GET_KEYS))
            reply = _read_frame(keys)
        assert reply is not None and reply[0] is FrameType.KEYS
        key = ohttp.decode_key_configs(reply[1])[0]
        for _ in range(config.limits.max_concurrent_requests + framing.STREAM_SLOTS + 2):
            stream = _connect(process.socket_path)
            streams.append(stream)
            encoder = chunked_ohttp.ChunkedRequestEncoder(key)
            header = encoder.header()
            first = encoder.chunk(_inner("PUT", "/v1/model"))
            stream.sendall(framing.encode_frame(FrameType.CHUNKED_BEGIN, header + first[:1]))
        for stream in streams:  # a byte each: the trickle
            stream.sendall(framing.encode_frame(FrameType.CHUNKED_DATA, b"\0"))
        for _ in range(3):
            sent, context = ohttp.encapsulate_request(key, _inner("POST", "/v1/classify", content=b"x"))
            with _connect(process.socket_path) as client:
                client.sendall(framing.encode_frame(FrameType.OHTTP_REQUEST, sent))
                answer = _read_frame(client)
            assert answer is not None and answer[0] is FrameType.OHTTP_RESPONSE, answer
            response = bhttp.decode_response(context.decapsulate_response(answer[1]))
            assert response.status == 409 or response.status >= 400  # answered (no model yet)
    finally:
        for stream in streams:
            stream.close()
        process.stop()


def test_a_stream_that_is_no_signed_upload_is_answered_and_dropped_at_its_head(tmp_path: Path) -> None:
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    process = EnclaveProcess(config, tmp_path / "data", platform="simulation")
    process.start()
    try:
        with _connect(process.socket_path) as keys:
            keys.sendall(framing.encode_frame(FrameType.GET_KEYS))
            reply = _read_frame(keys)
        assert reply is not None
        key = ohttp.decode_key_configs(reply[1])[0]
        forged = (("manifest", ":e30=:"), ("manifest-signature", ":" + "A" * 86 + "==:"))
        for head in (_inner("PUT", "/v1/model", forged), _inner("PUT", "/v1/model")):
            encoder = chunked_ohttp.ChunkedRequestEncoder(key)
            with _connect(process.socket_path) as stream:
                header = encoder.header()
                stream.sendall(framing.encode_frame(FrameType.CHUNKED_BEGIN, header + encoder.chunk(head)))
                answer = _read_frame(stream)
                assert answer is not None and answer[0] is FrameType.CHUNKED_RESPONSE
                decoder = encoder.response_decoder()
                response = bhttp.decode_response(b"".join(decoder.feed(answer[1])) + decoder.finish())
                assert response.status >= 400
                assert _read_frame(stream) is None  # dropped: the enclave closed the connection
    finally:
        process.stop()


def test_a_stream_below_the_minimum_rate_is_dropped(tmp_path: Path) -> None:
    config = EnclaveConfig(owner_public_key=bytes(range(32)))
    limits = ServerLimits(stream_grace_seconds=0.0, min_stream_bytes_per_second=1 << 30)
    enclave = server.Enclave(
        config, SimulationPlatform(config), tmp_path / "sealed", limits=limits, verifier=Verifier.production()
    )
    listener = server._UnixServer(str(tmp_path / "e.sock"), server._Handler)
    listener.enclave = enclave
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        encoder = chunked_ohttp.ChunkedRequestEncoder(enclave.key.config)
        with _connect(tmp_path / "e.sock") as stream:
            stream.sendall(framing.encode_frame(FrameType.CHUNKED_BEGIN, encoder.header()))
            answer = _read_frame(stream)
            assert answer is not None and answer[0] is FrameType.ERROR
            assert framing.decode_problem(answer[1]).problem is Problem.REQUEST_TIMEOUT
            assert _read_frame(stream) is None
    finally:
        listener.shutdown()
        listener.server_close()
