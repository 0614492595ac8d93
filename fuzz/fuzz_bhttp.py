"""Binary HTTP (RFC 9292): decode_request, decode_response and the streamed RequestStream.

Beyond "only ProtocolError escapes": what decodes re-encodes to the same message (the encoder accepts
whatever the decoder does); a RequestStream gives the same head and content however its input is
split, and the same as decode_request; its buffer stays within its named limits.
"""

from __future__ import annotations

import atheris

from _harness import EnclaveInferError, main, mutate_bytes, splits

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.protocol import bhttp

METHODS = ["GET", "POST", "PUT", "HEAD", "X-Y", "", "G T"]
PATHS = ["/v1/classify?top=3", "/v1/model", "/", "*", "", "/\x7f", "/a b"]


def check_request_roundtrip(req: bhttp.Request) -> None:
    again = bhttp.decode_request(bhttp.encode_request(req))
    assert again == req, (again, req)


def check_response_roundtrip(resp: bhttp.Response) -> None:
    again = bhttp.decode_response(bhttp.encode_response(resp))
    assert again == resp, (again, resp)


def stream(pieces: list[bytes]) -> tuple[bhttp.Request | None, bytes]:
    s = bhttp.RequestStream()
    content = bytearray()
    for piece in pieces:
        content += b"".join(s.feed(piece))
        # the buffer is bounded: the head by MAX_STREAM_HEAD_BYTES, content by one varint, trailers
        # by 64 KiB (RequestStream's _MAX_TRAILER_BYTES)
        held = len(s._buf)
        if s.head is None:
            assert held <= bhttp.MAX_STREAM_HEAD_BYTES
        elif s._in_content:
            assert held < 8, held
        else:
            assert held <= 64 * 1024, held
    content += b"".join(s.finish())
    assert s.done
    return s.head, bytes(content)


def structured(fdp: atheris.FuzzedDataProvider) -> bhttp.Request:
    headers = tuple(
        (fdp.PickValueInList(["date", "manifest", "model-sha256", "x", "Upper", ":path"]),
         fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20)))
        for _ in range(fdp.ConsumeIntInRange(0, 4))
    )  # fmt: skip
    return bhttp.Request(
        fdp.PickValueInList(METHODS),
        fdp.PickValueInList(["https", "", "http"]),
        fdp.PickValueInList(["enclave", "", "a:1"]),
        fdp.PickValueInList(PATHS),
        headers,
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)),
    )


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    try:
        if mode == 0:
            check_request_roundtrip(bhttp.decode_request(fdp.ConsumeBytes(fdp.remaining_bytes())))
        elif mode == 1:
            check_response_roundtrip(bhttp.decode_response(fdp.ConsumeBytes(fdp.remaining_bytes())))
        elif mode in (2, 3):
            if mode == 2:
                message = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, fdp.remaining_bytes()))
            else:  # a real streamed request, then edited
                req = structured(fdp)
                try:
                    body = bhttp.encode_request_head(req)
                except EnclaveInferError:
                    return
                for _ in range(fdp.ConsumeIntInRange(0, 3)):
                    body += bhttp.encode_content_chunk(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32)))
                message = mutate_bytes(fdp, body + bhttp.encode_request_end())
            try:
                whole = stream([message])
            except EnclaveInferError:
                whole = None
            try:
                split = stream(splits(fdp, message))
            except EnclaveInferError:
                split = None
            assert whole == split, (whole, split)
            if whole is not None:  # the streamed form is a subset of what decode_request reads
                once = bhttp.decode_request(message)
                assert whole[0] is not None
                assert (once.method, once.path, once.headers, once.content) == (
                    whole[0].method,
                    whole[0].path,
                    whole[0].headers,
                    whole[1],
                )
        else:
            try:
                encoded = bhttp.encode_request(structured(fdp))
            except EnclaveInferError:
                return
            check_request_roundtrip(bhttp.decode_request(mutate_bytes(fdp, encoded)))
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
