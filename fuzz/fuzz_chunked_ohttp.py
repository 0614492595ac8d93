"""Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp-08): the gateway's ChunkedRequestDecoder and
the client's ChunkedResponseDecoder, fed in pieces split where the input says.

Beyond "only ProtocolError/DecryptionError/UsageError escapes": a decoder never holds more than one
chunk (MAX_CHUNK_BYTES plus the tag); a real client's request or a real gateway's response, edited,
never completes unless the edits left it as it was, and then gives back what was sent.
"""

from __future__ import annotations

import atheris

from _harness import EnclaveInferError, main, mutate_bytes, splits

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.protocol import chunked_ohttp, ohttp

KEY = ohttp.GatewayKey(1, bytes(range(1, 33)))
# a chunk and its AEAD tag, or the request header with enc and the first Nt bytes
MAX_HELD = chunked_ohttp.MAX_CHUNK_BYTES + 16


def feed_all(decoder: chunked_ohttp._ChunkDecoder, pieces: list[bytes]) -> bytes:
    out = bytearray()
    for piece in pieces:
        out += b"".join(decoder.feed(piece))
        assert decoder.buffered <= MAX_HELD, decoder.buffered
    out += decoder.finish()
    assert decoder.finished
    return bytes(out)


def real_request(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, bytes, chunked_ohttp.ChunkedRequestEncoder]:
    encoder = chunked_ohttp.ChunkedRequestEncoder(KEY.config)
    sent, plain = encoder.header(), b""
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 48)) or b"x"
        sent += encoder.chunk(piece)
        plain += piece
    last = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    return sent + encoder.final(last), plain + last, encoder


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    try:
        if mode == 0:
            message = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, fdp.remaining_bytes()))
            feed_all(chunked_ohttp.ChunkedRequestDecoder(KEY), splits(fdp, message))
        elif mode == 1:
            sent, plain, _ = real_request(fdp)
            edited = mutate_bytes(fdp, sent)
            opened = feed_all(chunked_ohttp.ChunkedRequestDecoder(KEY), splits(fdp, edited))
            assert edited == sent and opened == plain, "an edited chunked request opened"
        else:
            sent, _, client = real_request(fdp)
            gateway = chunked_ohttp.ChunkedRequestDecoder(KEY)
            feed_all(gateway, [sent])
            response = gateway.response_encoder()
            body, real = b"", response.header()
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 48)) or b"y"
                real += response.chunk(piece)
                body += piece
            real += response.final(b"end")
            body += b"end"
            answer = mutate_bytes(fdp, real) if mode == 2 else fdp.ConsumeBytes(fdp.remaining_bytes())
            opened = feed_all(client.response_decoder(), splits(fdp, answer))
            assert answer == real and opened == body, "an edited chunked response opened"
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
