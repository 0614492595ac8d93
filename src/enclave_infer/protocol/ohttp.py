"""Oblivious HTTP (RFC 9458): HPKE encapsulation of binary HTTP requests and responses.

Pure protocol code on bytes, with no I/O, used on both sides of the relay: the client encapsulates
requests and opens responses, and the oblivious gateway inside the enclave opens requests and
encapsulates responses. HPKE (RFC 9180) is pyhpke; the response AEAD and HKDF are pyca/cryptography.

Only DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256 and AES-128-GCM is supported; other algorithm ids
are rejected with a ProtocolError. Peer bytes that do not parse raise ProtocolError, and every
authentication failure raises a bare DecryptionError.

The per-message HPKE setup (:func:`setup_sender`, :func:`setup_recipient`) and the response key
derivation (:func:`export_response_secret`, :func:`derive_response_key`) take their labels as
parameters: they are the seam the chunked variant (``chunked_ohttp``, draft-ietf-ohai-chunked-ohttp),
which differs in labels and framing, builds on.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from pyhpke import (
    AEADId,
    CipherSuite,
    ContextInterface,
    KDFId,
    KEMId,
    KEMKey,
    KEMKeyInterface,
    KEMKeyPair,
    PyHPKEError,
)

from enclave_infer.errors import DecryptionError, ProtocolError, UsageError

__all__ = [
    "AEAD_AES_128_GCM",
    "KDF_HKDF_SHA256",
    "KEM_X25519_HKDF_SHA256",
    "MEDIA_TYPE_KEYS",
    "MEDIA_TYPE_REQUEST",
    "MEDIA_TYPE_RESPONSE",
    "REQUEST_HEADER",
    "ClientResponseContext",
    "GatewayKey",
    "GatewayResponseContext",
    "KeyConfig",
    "KeyMismatchError",
    "Suite",
    "decapsulate_request",
    "decode_key_configs",
    "derive_response_key",
    "encapsulate_request",
    "encode_key_configs",
    "export_response_secret",
    "setup_recipient",
    "setup_sender",
]

# HPKE algorithm identifiers (RFC 9180 §7, IANA "HPKE" registry).
KEM_X25519_HKDF_SHA256: Final = 0x0020
KDF_HKDF_SHA256: Final = 0x0001
AEAD_AES_128_GCM: Final = 0x0001

# RFC 9458 §9.
MEDIA_TYPE_KEYS: Final = "application/ohttp-keys"
MEDIA_TYPE_REQUEST: Final = "message/ohttp-req"
MEDIA_TYPE_RESPONSE: Final = "message/ohttp-res"

# RFC 9458 §4.3 (HPKE info) and §4.4 (HPKE exporter context).
_REQUEST_LABEL: Final = b"message/bhttp request"
_RESPONSE_LABEL: Final = b"message/bhttp response"


class KeyMismatchError(ProtocolError):
    """The request names a key id, KEM or algorithms that this gateway's key configuration does not
    have (RFC 9458 §4.3 step 1): the client holds an outdated configuration."""


@dataclass(frozen=True)
class _KemParams:  # RFC 9180 §7.1
    hpke_id: KEMId
    n_enc: int  # = Npk for the DHKEMs


@dataclass(frozen=True)
class _KdfParams:  # RFC 9180 §7.2
    hpke_id: KDFId
    hash: type[hashes.HashAlgorithm]


@dataclass(frozen=True)
class _AeadParams:  # RFC 9180 §7.3
    hpke_id: AEADId
    n_k: int
    n_n: int
    n_t: int
    cipher: type[AESGCM]


# Supported algorithms, by IANA id, with their RFC 9180 §7 parameters. Adding one is one line.
_KEMS: Final = {KEM_X25519_HKDF_SHA256: _KemParams(KEMId.DHKEM_X25519_HKDF_SHA256, n_enc=32)}
_KDFS: Final = {KDF_HKDF_SHA256: _KdfParams(KDFId.HKDF_SHA256, hashes.SHA256)}
_AEADS: Final = {AEAD_AES_128_GCM: _AeadParams(AEADId.AES128_GCM, n_k=16, n_n=12, n_t=16, cipher=AESGCM)}

# key_id, kem_id, kdf_id, aead_id (RFC 9458 §4.1): the header of a request, chunked or not.
REQUEST_HEADER: Final = struct.Struct("!BHHH")


@dataclass(frozen=True)
class Suite:
    """One supported (KEM, KDF, AEAD) combination, with its sizes."""

    kem_id: int
    kdf_id: int
    aead_id: int

    @classmethod
    def of(cls, kem_id: int, kdf_id: int, aead_id: int) -> Suite:
        if kem_id not in _KEMS:
            raise ProtocolError(f"unsupported KEM 0x{kem_id:04x}")
        if kdf_id not in _KDFS or aead_id not in _AEADS:
            raise ProtocolError(f"unsupported KDF/AEAD 0x{kdf_id:04x}/0x{aead_id:04x}")
        return cls(kem_id, kdf_id, aead_id)

    @property
    def hpke(self) -> CipherSuite:
        return CipherSuite.new(
            _KEMS[self.kem_id].hpke_id, _KDFS[self.kdf_id].hpke_id, _AEADS[self.aead_id].hpke_id
        )

    @property
    def n_enc(self) -> int:
        return _KEMS[self.kem_id].n_enc

    @property
    def n_k(self) -> int:
        return _AEADS[self.aead_id].n_k

    @property
    def n_n(self) -> int:
        return _AEADS[self.aead_id].n_n

    @property
    def n_t(self) -> int:
        return _AEADS[self.aead_id].n_t

    @property
    def response_nonce_len(self) -> int:
        return max(self.n_n, self.n_k)  # RFC 9458 §4.2

    def hash(self) -> hashes.HashAlgorithm:
        return _KDFS[self.kdf_id].hash()

    def aead(self, key: bytes) -> AESGCM:
        return _AEADS[self.aead_id].cipher(key)

    def hdr(self, key_id: int) -> bytes:
        return REQUEST_HEADER.pack(key_id, self.kem_id, self.kdf_id, self.aead_id)


_GATEWAY_SUITE: Final = Suite(KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM)


# -- Key configuration (RFC 9458 §3) ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyConfig:
    """A gateway's key configuration (RFC 9458 §3.1); ``symmetric_algorithms`` are (kdf, aead)."""

    key_id: int
    kem_id: int
    public_key: bytes
    symmetric_algorithms: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 0xFF:
            raise UsageError("key_id must fit in one byte")
        if self.kem_id not in _KEMS:
            raise UsageError(f"unsupported KEM 0x{self.kem_id:04x}")
        if len(self.public_key) != _KEMS[self.kem_id].n_enc:
            raise UsageError("public key length does not match the KEM")
        algs = self.symmetric_algorithms
        if not algs or any(len(a) != 2 or not all(0 <= i <= 0xFFFF for i in a) for a in algs):
            raise UsageError("symmetric_algorithms must be non-empty (kdf_id, aead_id) pairs")

    def encode(self) -> bytes:
        """RFC 9458 §3.1: key_id(8) kem_id(16) pk(Npk*8) algs_len(16) (kdf_id(16) aead_id(16))..."""
        algs = b"".join(struct.pack("!HH", kdf_id, aead_id) for kdf_id, aead_id in self.symmetric_algorithms)
        head = struct.pack("!BH", self.key_id, self.kem_id) + self.public_key
        return head + struct.pack("!H", len(algs)) + algs

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """Parse one RFC 9458 §3.1 key configuration, which must fill ``data`` exactly."""
        if len(data) < 3:
            raise ProtocolError("key configuration too short")
        key_id, kem_id = struct.unpack_from("!BH", data)
        if kem_id not in _KEMS:  # Npk, hence the layout, depends on the KEM
            raise ProtocolError(f"unsupported KEM 0x{kem_id:04x}")
        pk_end = 3 + _KEMS[kem_id].n_enc
        if len(data) < pk_end + 2:
            raise ProtocolError("key configuration too short")
        (algs_len,) = struct.unpack_from("!H", data, pk_end)
        algs = data[pk_end + 2 :]
        if algs_len != len(algs) or algs_len == 0 or algs_len % 4:
            raise ProtocolError("bad symmetric algorithms length in key configuration")
        pairs = tuple((kdf_id, aead_id) for kdf_id, aead_id in struct.iter_unpack("!HH", algs))
        return cls(key_id, kem_id, bytes(data[3:pk_end]), pairs)


def encode_key_configs(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys`` (RFC 9458 §3.2): each configuration prefixed by a u16 length."""
    out = []
    for config in configs:
        encoded = config.encode()
        if len(encoded) > 0xFFFF:
            raise UsageError("key configuration too long")
        out.append(struct.pack("!H", len(encoded)) + encoded)
    if not out:
        raise UsageError("at least one key configuration is required")
    return b"".join(out)


def decode_key_configs(data: bytes) -> list[KeyConfig]:
    """Parse ``application/ohttp-keys`` (RFC 9458 §3.2).

    Configurations with a KEM we do not support are skipped (their length prefix allows it); it is an
    error if none remains.
    """
    if not data:
        raise ProtocolError("empty key configuration list")
    configs, offset = [], 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise ProtocolError("truncated key configuration list")
        (length,) = struct.unpack_from("!H", data, offset)
        item = data[offset + 2 : offset + 2 + length]
        offset += 2 + length
        if len(item) != length:
            raise ProtocolError("truncated key configuration list")
        if len(item) >= 3 and int.from_bytes(item[1:3], "big") not in _KEMS:
            continue
        configs.append(KeyConfig.decode(item))
    if not configs:
        raise ProtocolError("no key configuration with a supported KEM")
    return configs


class GatewayKey:
    """The gateway's HPKE private key ``skR`` and its key configuration. Never shows ``skR``."""

    __slots__ = ("_config", "_sk_r")

    def __init__(self, key_id: int, sk_r: bytes) -> None:
        suite = _GATEWAY_SUITE
        if len(sk_r) != suite.n_enc:
            raise UsageError("bad private key length")
        self._sk_r: KEMKeyInterface = suite.hpke.kem.deserialize_private_key(sk_r)
        pk_r = KEMKey.from_pyca_cryptography_key(self._sk_r.raw.public_key()).to_public_bytes()
        self._config = KeyConfig(key_id, suite.kem_id, pk_r, ((suite.kdf_id, suite.aead_id),))

    @classmethod
    def generate(cls, key_id: int = 1) -> GatewayKey:
        """A fresh key pair from RFC 9180 §7.1.3 DeriveKeyPair over 32 random bytes."""
        pair = _GATEWAY_SUITE.hpke.kem.derive_key_pair(secrets.token_bytes(32))
        return cls(key_id, pair.private_key.to_private_bytes())

    @classmethod
    def from_private_bytes(cls, key_id: int, sk: bytes) -> GatewayKey:
        return cls(key_id, sk)

    @property
    def config(self) -> KeyConfig:
        return self._config

    def private_bytes(self) -> bytes:
        """``skR`` itself: only for attested key release between enclaves of one cluster, which
        encrypts it to a verified peer (:mod:`enclave_infer.cluster.keyrelease`)."""
        return bytes(self._sk_r.to_private_bytes())

    def __repr__(self) -> str:
        return f"GatewayKey(config={self._config!r})"


# -- Per-message HPKE setup (RFC 9458 §4.3), shared with the chunked variant ------------------------


def _request_info(label: bytes, hdr: bytes) -> bytes:
    return label + b"\x00" + hdr  # RFC 9458 §4.3 step 2


def setup_sender(
    config: KeyConfig, label: bytes, sk_e: bytes | None
) -> tuple[bytes, bytes, ContextInterface, Suite]:
    """SetupBaseS (RFC 9180 §5.1.1) to the configuration's key; returns hdr, enc, sctxt, suite."""
    # The client picks the first (kdf, aead) it supports (RFC 9458 §4.3).
    pair = next(((k, a) for k, a in config.symmetric_algorithms if k in _KDFS and a in _AEADS), None)
    if pair is None:
        raise ProtocolError("key configuration offers no supported KDF/AEAD")
    suite = Suite.of(config.kem_id, *pair)
    hpke = suite.hpke
    hdr = suite.hdr(config.key_id)
    eks = None
    if sk_e is not None:  # test vectors only: a fixed ephemeral key skE
        try:
            sk = hpke.kem.deserialize_private_key(sk_e)
        except ValueError:
            raise UsageError("bad ephemeral private key") from None
        eks = KEMKeyPair(sk, KEMKey.from_pyca_cryptography_key(sk.raw.public_key()))
    try:
        pk_r = hpke.kem.deserialize_public_key(config.public_key)
        enc, sctxt = hpke.create_sender_context(pk_r, _request_info(label, hdr), eks=eks)
    except (ValueError, PyHPKEError):  # e.g. a low-order pkR: the DH output is all zeros
        raise ProtocolError("invalid public key in key configuration") from None
    return hdr, enc, sctxt, suite


def setup_recipient(
    key: GatewayKey, enc_request: bytes, label: bytes
) -> tuple[bytes, ContextInterface, Suite, bytes]:
    """Parse hdr || enc || rest and SetupBaseR (RFC 9180 §5.1.1); returns enc, rctxt, suite, rest.

    Raises :class:`KeyMismatchError` when the header does not match ``key``'s configuration."""
    if len(enc_request) < REQUEST_HEADER.size:
        raise ProtocolError("encapsulated request too short")
    key_id, kem_id, kdf_id, aead_id = REQUEST_HEADER.unpack_from(enc_request)
    config = key.config
    if key_id != config.key_id:  # RFC 9458 §4.3 step 1
        raise KeyMismatchError(f"unknown key id {key_id}")
    if kem_id != config.kem_id:  # step 1a
        raise KeyMismatchError(f"KEM 0x{kem_id:04x} does not match key {key_id}")
    if (kdf_id, aead_id) not in config.symmetric_algorithms:  # step 1b
        raise KeyMismatchError(f"unsupported KDF/AEAD 0x{kdf_id:04x}/0x{aead_id:04x}")
    suite = Suite.of(kem_id, kdf_id, aead_id)
    enc_end = REQUEST_HEADER.size + suite.n_enc
    if len(enc_request) < enc_end + suite.n_t:
        raise ProtocolError("encapsulated request too short")
    hdr = enc_request[: REQUEST_HEADER.size]
    enc, rest = enc_request[REQUEST_HEADER.size : enc_end], enc_request[enc_end:]
    try:
        rctxt = suite.hpke.create_recipient_context(enc, key._sk_r, _request_info(label, hdr))
    except (ValueError, PyHPKEError):  # Decap failure (RFC 9180 §4.1), e.g. a low-order enc
        raise DecryptionError() from None
    return enc, rctxt, suite, rest


# -- Response key derivation (RFC 9458 §4.4), shared with the chunked variant -----------------------


def export_response_secret(context: ContextInterface, suite: Suite, label: bytes) -> bytes:
    """secret = context.Export(label, max(Nn, Nk)) (RFC 9458 §4.4 step 1, RFC 9180 §5.3)."""
    return context.export(label, suite.response_nonce_len)


def derive_response_key(
    suite: Suite, secret: bytes, enc: bytes, response_nonce: bytes
) -> tuple[bytes, bytes]:
    """RFC 9458 §4.4 steps 3-5; returns (aead_key, aead_nonce)."""
    prk = HKDF.extract(suite.hash(), enc + response_nonce, secret)  # salt = enc || response_nonce
    aead_key = HKDFExpand(suite.hash(), suite.n_k, b"key").derive(prk)
    aead_nonce = HKDFExpand(suite.hash(), suite.n_n, b"nonce").derive(prk)
    return aead_key, aead_nonce


# -- Request and response encapsulation (RFC 9458 §4.3, §4.4) --------------------------------------


class ClientResponseContext:
    """What the client keeps from an encapsulated request to open the response to it."""

    __slots__ = ("_context", "_suite", "enc")

    def __init__(self, suite: Suite, context: ContextInterface, enc: bytes) -> None:
        self._suite, self._context, self.enc = suite, context, enc

    def decapsulate_response(self, enc_response: bytes) -> bytes:
        """Open ``response_nonce || ct`` (RFC 9458 §4.4)."""
        n = self._suite.response_nonce_len
        if len(enc_response) < n + self._suite.n_t:
            raise ProtocolError("encapsulated response too short")
        response_nonce, ct = enc_response[:n], enc_response[n:]
        secret = export_response_secret(self._context, self._suite, _RESPONSE_LABEL)
        aead_key, aead_nonce = derive_response_key(self._suite, secret, self.enc, response_nonce)
        try:
            return self._suite.aead(aead_key).decrypt(aead_nonce, ct, b"")
        except InvalidTag:
            raise DecryptionError() from None


class GatewayResponseContext:
    """What the gateway keeps from a decapsulated request to encapsulate the response to it.

    ``enc`` is the client's encapsulated KEM share, unique per request: a replay cache key.
    """

    __slots__ = ("_context", "_suite", "enc")

    def __init__(self, suite: Suite, context: ContextInterface, enc: bytes) -> None:
        self._suite, self._context, self.enc = suite, context, enc

    def encapsulate_response(self, response: bytes, *, _response_nonce: bytes | None = None) -> bytes:
        """Return ``response_nonce || ct`` (RFC 9458 §4.4); ``_response_nonce`` is for test vectors."""
        n = self._suite.response_nonce_len
        response_nonce = secrets.token_bytes(n) if _response_nonce is None else _response_nonce
        if len(response_nonce) != n:
            raise UsageError(f"response nonce must be {n} bytes")
        secret = export_response_secret(self._context, self._suite, _RESPONSE_LABEL)
        aead_key, aead_nonce = derive_response_key(self._suite, secret, self.enc, response_nonce)
        return response_nonce + self._suite.aead(aead_key).encrypt(aead_nonce, response, b"")


def encapsulate_request(
    config: KeyConfig, request: bytes, *, _ephemeral_private_key: bytes | None = None
) -> tuple[bytes, ClientResponseContext]:
    """Encapsulate a binary HTTP request: ``hdr || enc || ct`` (RFC 9458 §4.3).

    ``_ephemeral_private_key`` (skE) is for test vectors only.
    """
    hdr, enc, sctxt, suite = setup_sender(config, _REQUEST_LABEL, _ephemeral_private_key)
    try:
        ct = sctxt.seal(request)  # empty aad
    except PyHPKEError:
        raise UsageError("request could not be encrypted") from None
    return hdr + enc + ct, ClientResponseContext(suite, sctxt, enc)


def decapsulate_request(key: GatewayKey, enc_request: bytes) -> tuple[bytes, GatewayResponseContext]:
    """Open an encapsulated request (RFC 9458 §4.3); returns the binary HTTP request."""
    enc, rctxt, suite, ct = setup_recipient(key, enc_request, _REQUEST_LABEL)
    try:
        request = rctxt.open(ct)  # empty aad
    except PyHPKEError:
        raise DecryptionError() from None
    return request, GatewayResponseContext(suite, rctxt, enc)
