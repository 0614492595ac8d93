"""Oblivious HTTP (RFC 9458): the gateway's decapsulate_request under a fixed key, key configurations
(decode_key_configs, KeyConfig.decode), the client's side of a response, and a client encapsulating
to a key configuration the host chose.

Beyond "only ProtocolError/DecryptionError escapes": a real client's request, edited, never opens
unless the edits left it as it was (and then opens to what was sent); key configurations re-encode
to the same bytes.
"""

from __future__ import annotations

import atheris

from _harness import EnclaveInferError, main, mutate_bytes

with atheris.instrument_imports(include=["enclave_infer"]):
    from enclave_infer.protocol import ohttp

KEY = ohttp.GatewayKey(1, bytes(range(1, 33)))


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 5)
    try:
        if mode == 0:
            ohttp.decapsulate_request(KEY, fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 1:
            configs = ohttp.decode_key_configs(fdp.ConsumeBytes(fdp.remaining_bytes()))
            for config in configs:
                assert ohttp.KeyConfig.decode(config.encode()) == config
            ohttp.decode_key_configs(ohttp.encode_key_configs(configs))
        elif mode == 2:
            config = ohttp.KeyConfig.decode(fdp.ConsumeBytes(fdp.remaining_bytes()))
            assert config.encode() == ohttp.KeyConfig.decode(config.encode()).encode()
        elif mode == 3:  # a real client's request, edited on the way
            plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
            sent, _ = ohttp.encapsulate_request(KEY.config, plaintext)
            edited = mutate_bytes(fdp, sent)
            opened, context = ohttp.decapsulate_request(KEY, edited)
            assert edited == sent and opened == plaintext, "an edited request opened"
            context.encapsulate_response(fdp.ConsumeBytes(64))
        elif mode == 4:  # the client opens a response, real and edited or made up
            sent, client = ohttp.encapsulate_request(KEY.config, b"request")
            _, gateway = ohttp.decapsulate_request(KEY, sent)
            body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 128))
            real = gateway.encapsulate_response(body)
            answer = mutate_bytes(fdp, real) if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.remaining_bytes())
            opened = client.decapsulate_response(answer)
            assert answer == real and opened == body, "an edited response opened"
        else:  # a client encapsulating to whatever key configuration the host sent
            configs = ohttp.decode_key_configs(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 128)))
            ohttp.encapsulate_request(configs[0], fdp.ConsumeBytes(32))
    except EnclaveInferError:
        pass


if __name__ == "__main__":
    main(test_one_input)
