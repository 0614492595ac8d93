// Oblivious HTTP (RFC 9458), the client's half, as protocol/ohttp.py does it: key configurations,
// request encapsulation with HPKE (RFC 9180 base mode, @hpke/core) and response decapsulation.
// One suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.

import { Aes128Gcm, CipherSuite, HkdfSha256 } from "@hpke/core";
import { DhkemX25519HkdfSha256 } from "@hpke/dhkem-x25519";

import { ProtocolError, concat, utf8 } from "./bytes.js";

export const MEDIA_TYPE_KEYS = "application/ohttp-keys";
export const MEDIA_TYPE_REQUEST = "message/ohttp-req";
export const MEDIA_TYPE_RESPONSE = "message/ohttp-res";
export const KEM_X25519_HKDF_SHA256 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
export const AEAD_AES_128_GCM = 0x0001;

const N_ENC = 32; // X25519 public key (RFC 9180 §7.1)
const N_K = 16; // AES-128-GCM key, nonce and tag (§7.3)
const N_N = 12;
const N_T = 16;
const RESPONSE_NONCE_BYTES = Math.max(N_N, N_K); // RFC 9458 §4.2
const REQUEST_LABEL = utf8("message/bhttp request");
const RESPONSE_LABEL = utf8("message/bhttp response");

export class DecryptionError extends Error {
  constructor() {
    super("the response did not decrypt: it was not made for this request");
  }
}

function u16(value) {
  return Uint8Array.of(value >> 8, value & 0xff);
}

function readU16(data, at) {
  return (data[at] << 8) | data[at + 1];
}

/** One key configuration (RFC 9458 §3.1) that fills ``data`` exactly. */
function decodeKeyConfig(data) {
  if (data.length < 3) throw new ProtocolError("key configuration too short");
  const keyId = data[0];
  const kemId = readU16(data, 1);
  if (kemId !== KEM_X25519_HKDF_SHA256) throw new ProtocolError(`unsupported KEM 0x${kemId.toString(16).padStart(4, "0")}`);
  const pkEnd = 3 + N_ENC;
  if (data.length < pkEnd + 2) throw new ProtocolError("key configuration too short");
  const algsLength = readU16(data, pkEnd);
  const algs = data.subarray(pkEnd + 2);
  if (algsLength !== algs.length || algsLength === 0 || algsLength % 4) {
    throw new ProtocolError("bad symmetric algorithms length in key configuration");
  }
  const algorithms = [];
  for (let i = 0; i < algs.length; i += 4) algorithms.push([readU16(algs, i), readU16(algs, i + 2)]);
  return { keyId, kemId, publicKey: data.slice(3, pkEnd), algorithms };
}

/** ``application/ohttp-keys`` (RFC 9458 §3.2); configurations of other KEMs are skipped. */
export function decodeKeyConfigs(data) {
  if (!data.length) throw new ProtocolError("empty key configuration list");
  const configs = [];
  let offset = 0;
  while (offset < data.length) {
    if (data.length - offset < 2) throw new ProtocolError("truncated key configuration list");
    const length = readU16(data, offset);
    const item = data.subarray(offset + 2, offset + 2 + length);
    offset += 2 + length;
    if (item.length !== length) throw new ProtocolError("truncated key configuration list");
    if (item.length >= 3 && readU16(item, 1) !== KEM_X25519_HKDF_SHA256) continue;
    configs.push(decodeKeyConfig(item));
  }
  if (!configs.length) throw new ProtocolError("no key configuration with a supported KEM");
  return configs;
}

/** The RFC 9458 §3.1 encoding of a configuration: what the attestation binding covers. */
export function encodeKeyConfig({ keyId, kemId, publicKey, algorithms }) {
  const algs = concat(...algorithms.map(([kdf, aead]) => concat(u16(kdf), u16(aead))));
  return concat(Uint8Array.of(keyId), u16(kemId), publicKey, u16(algs.length), algs);
}

export function supports(config) {
  return (
    config.kemId === KEM_X25519_HKDF_SHA256 &&
    config.algorithms.some(([kdf, aead]) => kdf === KDF_HKDF_SHA256 && aead === AEAD_AES_128_GCM)
  );
}

function suite() {
  return new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Aes128Gcm() });
}

/** Encapsulate a binary HTTP request: ``hdr || enc || ct`` (RFC 9458 §4.3). Returns {encapsulated,
 * context}; ``context`` opens the response. ``ephemeral`` ({privateKey, publicKey}, raw skE and pkE)
 * is for test vectors only, as ohttp.py's ``_ephemeral_private_key``. */
export async function encapsulateRequest(config, request, { ephemeral } = {}) {
  if (!supports(config)) throw new ProtocolError("key configuration offers no supported KDF/AEAD");
  const hpke = suite();
  const ekm = ephemeral && {
    privateKey: await hpke.kem.deserializePrivateKey(ephemeral.privateKey),
    publicKey: await hpke.kem.deserializePublicKey(ephemeral.publicKey),
  };
  const hdr = concat(Uint8Array.of(config.keyId), u16(config.kemId), u16(KDF_HKDF_SHA256), u16(AEAD_AES_128_GCM));
  let recipientPublicKey;
  try {
    recipientPublicKey = await hpke.kem.deserializePublicKey(config.publicKey);
  } catch {
    throw new ProtocolError("invalid public key in key configuration");
  }
  const info = concat(REQUEST_LABEL, Uint8Array.of(0), hdr); // RFC 9458 §4.3 step 2
  let sender;
  try {
    sender = await hpke.createSenderContext({ recipientPublicKey, info, ekm });
  } catch {
    throw new ProtocolError("invalid public key in key configuration"); // e.g. a low-order point
  }
  const enc = new Uint8Array(sender.enc);
  const ct = new Uint8Array(await sender.seal(request));
  return { encapsulated: concat(hdr, enc, ct), context: new ResponseContext(sender, enc) };
}

/** What the client keeps from a request to open the response to it (RFC 9458 §4.4). */
class ResponseContext {
  constructor(sender, enc) {
    this.sender = sender;
    this.enc = enc;
  }

  async exportSecret() {
    return new Uint8Array(await this.sender.export(RESPONSE_LABEL, RESPONSE_NONCE_BYTES));
  }

  /** Open ``response_nonce || ct``: the binary HTTP response. */
  async decapsulateResponse(data) {
    if (data.length < RESPONSE_NONCE_BYTES + N_T) throw new ProtocolError("encapsulated response too short");
    const responseNonce = data.subarray(0, RESPONSE_NONCE_BYTES);
    const ct = data.subarray(RESPONSE_NONCE_BYTES);
    // prk = Extract(enc || response_nonce, secret); key = Expand(prk, "key", Nk); nonce = Expand(prk, "nonce", Nn)
    const secret = await crypto.subtle.importKey("raw", await this.exportSecret(), "HKDF", false, ["deriveBits"]);
    const salt = concat(this.enc, responseNonce);
    const expand = async (label, bytes) =>
      new Uint8Array(
        await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: utf8(label) }, secret, 8 * bytes),
      );
    const aeadKey = await crypto.subtle.importKey("raw", await expand("key", N_K), "AES-GCM", false, ["decrypt"]);
    const iv = await expand("nonce", N_N);
    try {
      return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv }, aeadKey, ct));
    } catch {
      throw new DecryptionError();
    }
  }
}
