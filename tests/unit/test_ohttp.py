"""Tests of the RFC 9458 (Oblivious HTTP) encapsulation: the RFC's Appendix A example, round trips,
tampering and truncation, and key configuration (list) encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_infer.errors import DecryptionError, ProtocolError, UsageError
from enclave_infer.protocol import ohttp
from enclave_infer.protocol.ohttp import (
    AEAD_AES_128_GCM,
    KDF_HKDF_SHA256,
    KEM_X25519_HKDF_SHA256,
    GatewayKey,
    KeyConfig,
    decapsulate_request,
    decode_key_configs,
    encapsulate_request,
    encode_key_configs,
)

VECTOR = json.loads((Path(__file__).parent.parent / "vectors/ohttp/rfc9458-appendix-a.json").read_text())
SK_R = bytes.fromhex(VECTOR["gateway_private_key_skR"])
SK_E = bytes.fromhex(VECTOR["client_ephemeral_private_key_skE"])
REQUEST = bytes.fromhex(VECTOR["request_bhttp"])
ENC_REQUEST = bytes.fromhex(VECTOR["encapsulated_request"])
RESPONSE = bytes.fromhex(VECTOR["response_bhttp"])
RESPONSE_NONCE = bytes.fromhex(VECTOR["response_nonce"])
ENC_RESPONSE = bytes.fromhex(VECTOR["encapsulated_response"])

# RFC 9458 Appendix A also prints the gateway's key configuration: key id 1, X25519, pkR, and two
# symmetric algorithms, HKDF-SHA256 with AES-128-GCM (0x0001) and with ChaCha20Poly1305 (0x0003).
RFC_KEY_CONFIG = bytes.fromhex(
    "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003"
)
CHACHA20_POLY1305 = 0x0003
HDR_LEN, N_ENC, N_T, RESPONSE_NONCE_LEN = 7, 32, 16, 16


def _vector_key() -> GatewayKey:
    return GatewayKey.from_private_bytes(1, SK_R)


def _vector_client() -> ohttp.ClientResponseContext:
    return encapsulate_request(_vector_key().config, REQUEST, _ephemeral_private_key=SK_E)[1]


# -- RFC 9458 Appendix A ------------------------------------------------------------------------------


def test_vector_suite_is_the_supported_one() -> None:
    assert VECTOR["suite"]["key_id"] == 1
    assert (KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM) == (0x0020, 0x0001, 0x0001)


def test_vector_key_config() -> None:
    key = _vector_key()
    rfc = KeyConfig.decode(RFC_KEY_CONFIG)
    assert rfc == KeyConfig(
        1,
        KEM_X25519_HKDF_SHA256,
        key.config.public_key,
        ((KDF_HKDF_SHA256, AEAD_AES_128_GCM), (KDF_HKDF_SHA256, CHACHA20_POLY1305)),
    )
    assert rfc.encode() == RFC_KEY_CONFIG
    assert key.config.symmetric_algorithms == ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),)
    # The encapsulated request's header: key_id || kem_id || kdf_id || aead_id.
    assert ENC_REQUEST[:HDR_LEN] == bytes.fromhex("01 0020 0001 0001")


@pytest.mark.parametrize("use_rfc_config", [True, False])
def test_vector_encapsulated_request(use_rfc_config: bool) -> None:
    config = KeyConfig.decode(RFC_KEY_CONFIG) if use_rfc_config else _vector_key().config
    enc_request, _ = encapsulate_request(config, REQUEST, _ephemeral_private_key=SK_E)
    assert enc_request == ENC_REQUEST


def test_vector_gateway_decapsulates_and_encapsulates_response() -> None:
    request, context = decapsulate_request(_vector_key(), ENC_REQUEST)
    assert request == REQUEST
    assert context.enc == ENC_REQUEST[HDR_LEN : HDR_LEN + N_ENC]
    # An intermediate value the vector gives: the exported secret (RFC 9458 §4.4 step 1).
    secret = ohttp.export_response_secret(context._context, context._suite, ohttp._RESPONSE_LABEL)
    assert secret.hex() == VECTOR["exported_response_secret"]
    assert context.encapsulate_response(RESPONSE, _response_nonce=RESPONSE_NONCE) == ENC_RESPONSE


def test_vector_client_decapsulates_response() -> None:
    assert _vector_client().decapsulate_response(ENC_RESPONSE) == RESPONSE


# -- Round trips with fresh keys ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 100_000])
def test_round_trip(size: int) -> None:
    key = GatewayKey.generate(key_id=7)
    request, response = bytes(range(256)) * (size // 256) + b"q" * (size % 256), b"r" * size
    enc_request, client = encapsulate_request(key.config, request)
    assert enc_request[:HDR_LEN] == bytes.fromhex("07 0020 0001 0001")
    assert len(enc_request) == HDR_LEN + N_ENC + size + N_T
    got, gateway = decapsulate_request(key, enc_request)
    assert got == request
    assert gateway.enc == client.enc
    enc_response = gateway.encapsulate_response(response)
    assert len(enc_response) == RESPONSE_NONCE_LEN + size + N_T
    assert client.decapsulate_response(enc_response) == response


def test_encapsulation_is_randomised() -> None:
    key = GatewayKey.generate()
    (a, _), (b, _) = encapsulate_request(key.config, REQUEST), encapsulate_request(key.config, REQUEST)
    assert a[HDR_LEN:] != b[HDR_LEN:]
    _, gateway = decapsulate_request(key, a)
    assert gateway.encapsulate_response(RESPONSE) != gateway.encapsulate_response(RESPONSE)


def test_generated_keys_and_repr() -> None:
    a, b = GatewayKey.generate(), GatewayKey.generate(key_id=200)
    assert a.config.key_id == 1
    assert b.config.key_id == 200
    assert a.config.public_key != b.config.public_key
    key = _vector_key()
    assert SK_R.hex() not in repr(key)
    assert repr(SK_R) not in repr(key)
    assert repr(key) == f"GatewayKey(config={key.config!r})"


def test_bad_private_keys_and_nonces() -> None:
    with pytest.raises(UsageError):
        GatewayKey.from_private_bytes(1, SK_R[:31])
    with pytest.raises(UsageError):
        GatewayKey.from_private_bytes(256, SK_R)
    _, gateway = decapsulate_request(_vector_key(), ENC_REQUEST)
    with pytest.raises(UsageError):
        gateway.encapsulate_response(RESPONSE, _response_nonce=RESPONSE_NONCE[:-1])


# -- Tampering, truncation, wrong keys -------------------------------------------------------------------


def _flips(data: bytes) -> list[bytes]:
    """Every copy of ``data`` with exactly one bit flipped."""
    return [
        data[:i] + bytes([b ^ (1 << bit)]) + data[i + 1 :] for i, b in enumerate(data) for bit in range(8)
    ]


def test_every_bit_flip_of_the_request_is_rejected() -> None:
    key = _vector_key()
    for tampered in _flips(ENC_REQUEST):
        with pytest.raises((DecryptionError, ProtocolError)):
            decapsulate_request(key, tampered)


def test_every_bit_flip_of_the_response_is_rejected() -> None:
    client = _vector_client()
    for tampered in _flips(ENC_RESPONSE):
        with pytest.raises(DecryptionError):
            client.decapsulate_response(tampered)


def test_truncated_or_extended_request() -> None:
    key = _vector_key()
    for n in range(len(ENC_REQUEST)):
        expected = ProtocolError if n < HDR_LEN + N_ENC + N_T else DecryptionError
        with pytest.raises(ProtocolError) as excinfo:
            decapsulate_request(key, ENC_REQUEST[:n])
        assert type(excinfo.value) is expected
    with pytest.raises(DecryptionError):
        decapsulate_request(key, ENC_REQUEST + b"\x00")


def test_truncated_or_extended_response() -> None:
    client = _vector_client()
    for n in range(len(ENC_RESPONSE)):
        expected = ProtocolError if n < RESPONSE_NONCE_LEN + N_T else DecryptionError
        with pytest.raises(ProtocolError) as excinfo:
            client.decapsulate_response(ENC_RESPONSE[:n])
        assert type(excinfo.value) is expected
    with pytest.raises(DecryptionError):
        client.decapsulate_response(ENC_RESPONSE + b"\x00")


def test_decryption_error_says_nothing() -> None:
    with pytest.raises(DecryptionError) as excinfo:
        decapsulate_request(GatewayKey.generate(), ENC_REQUEST)  # same key id, another key
    assert str(excinfo.value) == "decryption failed"
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_wrong_key_id() -> None:
    with pytest.raises(ohttp.KeyMismatchError, match="unknown key id 1"):
        decapsulate_request(GatewayKey.from_private_bytes(2, SK_R), ENC_REQUEST)


def test_unsupported_algorithms_in_request_header() -> None:
    key = _vector_key()
    for hdr in ("01 0010 0001 0001", "01 0020 0002 0001", "01 0020 0001 0003"):
        # an outdated key configuration (RFC 9458 §5.3: the ohttp-key problem), not a decryption failure
        with pytest.raises(ohttp.KeyMismatchError):
            decapsulate_request(key, bytes.fromhex(hdr) + ENC_REQUEST[HDR_LEN:])


def test_response_from_another_exchange_is_rejected() -> None:
    key = GatewayKey.generate()
    _, client_a = encapsulate_request(key.config, REQUEST)
    enc_b, _ = encapsulate_request(key.config, REQUEST)
    _, gateway_b = decapsulate_request(key, enc_b)
    with pytest.raises(DecryptionError):
        client_a.decapsulate_response(gateway_b.encapsulate_response(RESPONSE))


def test_config_without_supported_symmetric_algorithm() -> None:
    config = KeyConfig(1, KEM_X25519_HKDF_SHA256, b"\x09" * 32, ((KDF_HKDF_SHA256, CHACHA20_POLY1305),))
    with pytest.raises(ProtocolError, match="no supported"):
        encapsulate_request(config, REQUEST)


def test_config_with_low_order_public_key() -> None:
    config = KeyConfig(1, KEM_X25519_HKDF_SHA256, bytes(32), ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),))
    with pytest.raises(ProtocolError, match="invalid public key"):
        encapsulate_request(config, REQUEST)


# -- Key configurations ----------------------------------------------------------------------------------


def test_key_config_list_round_trip() -> None:
    configs = [KeyConfig.decode(RFC_KEY_CONFIG), GatewayKey.generate(key_id=9).config]
    encoded = encode_key_configs(configs)
    assert encoded[:2] == len(RFC_KEY_CONFIG).to_bytes(2, "big")
    assert encoded[2 : 2 + len(RFC_KEY_CONFIG)] == RFC_KEY_CONFIG
    assert decode_key_configs(encoded) == configs
    assert decode_key_configs(encode_key_configs(configs[:1])) == configs[:1]


def test_key_config_list_skips_unsupported_kems() -> None:
    p256 = bytes.fromhex("05 0010") + b"\x04" * 65 + bytes.fromhex("0004 0001 0001")
    rfc = len(RFC_KEY_CONFIG).to_bytes(2, "big") + RFC_KEY_CONFIG
    assert decode_key_configs(len(p256).to_bytes(2, "big") + p256 + rfc) == [KeyConfig.decode(RFC_KEY_CONFIG)]
    with pytest.raises(ProtocolError, match="no key configuration"):
        decode_key_configs(len(p256).to_bytes(2, "big") + p256)
    with pytest.raises(ProtocolError, match="unsupported KEM"):
        KeyConfig.decode(p256)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00",  # a zero-length configuration
        b"\x00\x2e" + RFC_KEY_CONFIG,  # length beyond the end
        b"\x00\x2c" + RFC_KEY_CONFIG,  # length short of the configuration, then garbage
        b"\x00\x2d" + RFC_KEY_CONFIG + b"\x00",  # a trailing byte
        b"\x00\x2d" + RFC_KEY_CONFIG + b"\x00\x01\x01",  # a second, truncated configuration
    ],
)
def test_malformed_key_config_lists(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_key_configs(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        RFC_KEY_CONFIG[:3],
        RFC_KEY_CONFIG[:36],  # no symmetric algorithms length
        RFC_KEY_CONFIG[:-1],  # truncated symmetric algorithms
        RFC_KEY_CONFIG + b"\x00",  # trailing byte
        RFC_KEY_CONFIG[:35] + b"\x00\x00",  # no symmetric algorithms
        RFC_KEY_CONFIG[:35] + b"\x00\x06" + RFC_KEY_CONFIG[37:43],  # not a multiple of 4
    ],
)
def test_malformed_key_configs(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        KeyConfig.decode(data)


@pytest.mark.parametrize(
    ("key_id", "kem_id", "public_key", "algs"),
    [
        (256, KEM_X25519_HKDF_SHA256, b"\x09" * 32, ((1, 1),)),
        (1, 0x0010, b"\x09" * 65, ((1, 1),)),
        (1, KEM_X25519_HKDF_SHA256, b"\x09" * 31, ((1, 1),)),
        (1, KEM_X25519_HKDF_SHA256, b"\x09" * 32, ()),
        (1, KEM_X25519_HKDF_SHA256, b"\x09" * 32, ((1, 0x10000),)),
    ],
)
def test_invalid_key_config_values(
    key_id: int, kem_id: int, public_key: bytes, algs: tuple[tuple[int, int], ...]
) -> None:
    with pytest.raises(UsageError):
        KeyConfig(key_id, kem_id, public_key, algs)


def test_encode_empty_key_config_list() -> None:
    with pytest.raises(UsageError):
        encode_key_configs([])
