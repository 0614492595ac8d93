"""The enclave's side of the host↔enclave socket: the frame reader ``_Frames`` over a BytesIO,
``Enclave.answer`` for every frame type, and the connection handler that serves a whole byte stream
of frames (chunked uploads included) on a simulation enclave built as ``enclave/__main__.py`` does.

Frames are raw bytes, or built by the input: nonces of any length, real OHTTP requests carrying inner
requests made from the input (any method, path, query, date, pin, a manifest signed by the enclave's
owner and then edited, images, the model), raw or edited ciphertext, replays, chunked uploads cut
into frames anywhere. Checked: nothing escapes ``answer`` but ProtocolError-free answers; every reply
is one well-formed frame; error frames carry a known problem type; encrypted answers open, and the
ones that are problems carry a known type that is never ``internal-error``; evidence verifies for its
nonce; the enclave logs no error (its handlers turn unexpected exceptions into a logged
"internal error", which is how a bug shows here).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import atheris

from _harness import EnclaveInferError, LoggedErrors, main, mutate_bytes

with atheris.instrument_imports(include=["enclave_infer"]):
    from _enclave import build_enclave, chunked_frames, inner_request
    from enclave_infer.attestation.constraints import Constraint
    from enclave_infer.attestation.evidence import Verifier, verify
    from enclave_infer.attestation.report import SecurityLevel
    from enclave_infer.enclave import server
    from enclave_infer.protocol import bhttp, framing, ohttp
    from enclave_infer.protocol.api import EnclaveStatus, Problem, ProblemDetails
    from enclave_infer.protocol.framing import FrameType

ENCLAVE = build_enclave()
POLICY = Constraint(code_hashes=frozenset({ENCLAVE.platform.code_hash}), min_level=SecurityLevel.INSECURE)
BASELINE = ENCLAVE.store.current
LOGGED = LoggedErrors()
KINDS = [int(k) for k in FrameType] + [0x00, 0x07, 0x80, 0xFE]


def check_problem(details: ProblemDetails) -> None:
    problem = details.problem
    assert problem is not None, details.type
    assert problem is not Problem.INTERNAL, details
    assert problem.status == details.status, details


def split_frames(stream: bytes) -> list[tuple[FrameType, bytes]]:
    """Every frame the enclave wrote; each must be whole and of a reply type."""
    frames, pos = [], 0
    while pos < len(stream):
        kind, length = framing.parse_header(stream[pos : pos + framing.HEADER.size])
        pos += framing.HEADER.size
        assert pos + length <= len(stream), "a reply frame is cut short"
        assert kind >= 0x80, kind
        frames.append((kind, stream[pos : pos + length]))
        pos += length
    return frames


def check_reply(
    request: FrameType, reply: bytes, context: ohttp.ClientResponseContext | None, nonce: bytes | None
) -> None:
    ((kind, payload),) = split_frames(reply)
    if request in framing.REQUESTS:  # the reply its row names, or ERROR
        framing.check_reply(request, kind)
    else:
        assert kind is FrameType.ERROR, f"{request!r} is no request, yet answered with {kind!r}"
    if kind is FrameType.ERROR:
        check_problem(framing.decode_problem(payload))
    elif kind is FrameType.KEYS:
        assert ohttp.decode_key_configs(payload)[0] == ENCLAVE.key.config
    elif kind is FrameType.EVIDENCE:
        assert nonce is not None
        now = datetime.now(UTC)
        verify(
            payload,
            POLICY,
            verifier=Verifier.production(),
            key_config=ENCLAVE.key_config,
            nonce=nonce,
            now=now,
        )
    elif kind is FrameType.STATUS:
        EnclaveStatus.from_json(json.loads(payload))
    elif kind is FrameType.COLLATERAL_SET:
        assert payload == b""
    elif kind is FrameType.OHTTP_RESPONSE:
        assert context is not None, "an answer to a request that was not a real client's"
        response = bhttp.decode_response(context.decapsulate_response(payload))
        if response.status >= 400:
            check_problem(ProblemDetails.decode(response.content, status=response.status))
    else:
        raise AssertionError(f"unexpected reply {kind!r}")


def frame_reader(data: bytes) -> None:
    """``_Frames`` alone: read frames until the stream ends or breaks the framing."""
    frames = server._Frames(io.BytesIO(data), io.BytesIO(), 4096)
    try:
        while (frame := frames.next()) is not None:
            assert len(frame[1]) <= 4096, "a payload over the reader's limit"
    except server._FrameError as exc:  # the refusal it would send: one well-formed error frame
        ((kind, payload),) = split_frames(exc.reply)
        assert kind is FrameType.ERROR
        check_problem(framing.decode_problem(payload))


def encoded_inner(fdp: atheris.FuzzedDataProvider) -> bytes | None:
    """A binary HTTP request made from the input; None when the input asks for one that a client's
    encoder refuses (a field value with a NUL, say): no client could send it."""
    try:
        return bhttp.encode_request(inner_request(fdp, ENCLAVE))
    except EnclaveInferError:
        return None


def answers(fdp: atheris.FuzzedDataProvider) -> None:
    """``Enclave.answer`` for a few frames of any type."""
    previous: tuple[bytes, ohttp.ClientResponseContext] | None = None
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        kind = FrameType(fdp.PickValueInList([int(k) for k in FrameType]))
        context, nonce, how = None, None, fdp.ConsumeIntInRange(0, 5)
        if kind is FrameType.GET_EVIDENCE:
            payload = nonce = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
        elif kind is FrameType.OHTTP_REQUEST and how < 4:
            inner = encoded_inner(fdp)
            if inner is None:
                continue
            payload, context = ohttp.encapsulate_request(ENCLAVE.key.config, inner)
            previous = payload, context
            if how == 3:  # edited on the way: opens only if the edits left it as it was
                edited = mutate_bytes(fdp, payload)
                payload, context = edited, (context if edited == payload else None)
        elif kind is FrameType.OHTTP_REQUEST and how == 4 and previous is not None:
            payload, context = previous  # a replay: answered, with a refusal inside
        else:
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 128))
        check_reply(kind, ENCLAVE.answer(kind, payload), context, nonce)


class _Connection:
    """What the handler asks of its socket besides the streams: timeouts, which do nothing here."""

    def settimeout(self, value: float | None) -> None:
        pass


class _Server:
    enclave = ENCLAVE


def handler(fdp: atheris.FuzzedDataProvider) -> None:
    """The connection handler on a whole stream of frames, chunked uploads included."""
    stream = bytearray()
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        how = fdp.ConsumeIntInRange(0, 4)
        if how == 0:
            stream += framing.encode_frame(FrameType.CHUNKED_BEGIN, b"") if fdp.ConsumeBool() else b""
            stream += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        elif how == 1:
            kind = fdp.PickValueInList(KINDS)
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            stream += framing.HEADER.pack(kind, len(payload)) + payload
        elif how == 2:
            inner = encoded_inner(fdp)
            if inner is None:
                continue
            stream += framing.encode_frame(
                FrameType.OHTTP_REQUEST, ohttp.encapsulate_request(ENCLAVE.key.config, inner)[0]
            )
        else:
            try:
                frames = chunked_frames(fdp, ENCLAVE, inner_request(fdp, ENCLAVE))
            except EnclaveInferError:
                continue  # a request no client's encoder would send
            if how == 4:  # drop, repeat or edit a frame of the upload
                at = fdp.ConsumeIntInRange(0, len(frames) - 1)
                action = fdp.ConsumeIntInRange(0, 2)
                if action == 0:
                    del frames[at]
                elif action == 1:
                    frames.insert(at, frames[at])
                else:
                    frames[at] = mutate_bytes(fdp, frames[at])
            stream += b"".join(frames)
    out = io.BytesIO()
    h = server._Handler.__new__(server._Handler)
    h.rfile, h.wfile, h.connection, h.server = io.BytesIO(bytes(stream)), out, _Connection(), _Server()
    h.handle()
    for kind, payload in split_frames(out.getvalue()):
        if kind is FrameType.ERROR:
            check_problem(framing.decode_problem(payload))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    try:
        if mode == 0:
            frame_reader(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 1:
            answers(fdp)
        else:
            handler(fdp)
    except EnclaveInferError as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    finally:
        # a provision that went through is undone, so that inputs stay independent: the harness
        # alone rewinds the trusted state, which the enclave only ever moves forward
        ENCLAVE.state._model = BASELINE
    LOGGED.check()


if __name__ == "__main__":
    main(test_one_input)
