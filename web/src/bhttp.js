// Binary HTTP messages (RFC 9292), as protocol/bhttp.py writes and reads them: requests in the
// known-length form, optionally padded (§3.8); responses in either framing, with zero padding.

import { ProtocolError, ascii, concat, fromLatin1, latin1 } from "./bytes.js";

const MAX_VARINT = 2n ** 62n - 1n;
export const MAX_FIELDS = 256;
export const MAX_INFORMATIONAL = 16;
export const MAX_CONTENT_CHUNKS = 65536;
// RFC 9110 §5.6.2 tchar; field names must also be lowercase (RFC 9292 §3.6 via RFC 9113 §8.2.1).
const TCHAR = /^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$/;
const LOWER_TCHAR = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const VISIBLE_ASCII = /^[\x21-\x7e]*$/;

// -- variable-length integers (RFC 9000 §16) --------------------------------------------------------

export function encodeVarint(value) {
  if (!Number.isSafeInteger(value) || value < 0 || BigInt(value) > MAX_VARINT) {
    throw new ProtocolError(`integer ${value} does not fit a variable-length integer`);
  }
  if (value < 0x40) return Uint8Array.of(value);
  if (value < 0x4000) return Uint8Array.of(0x40 | (value >> 8), value & 0xff);
  if (value < 0x40000000) {
    return Uint8Array.of(0x80 | (value >>> 24), (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
  }
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value) | (0xc0n << 56n));
  return out;
}

class Reader {
  constructor(data) {
    this.data = data;
    this.pos = 0;
  }

  atEnd() {
    return this.pos >= this.data.length;
  }

  varint() {
    if (this.pos >= this.data.length) throw new ProtocolError("truncated message: variable-length integer expected");
    const length = 1 << (this.data[this.pos] >> 6);
    if (this.pos + length > this.data.length) throw new ProtocolError("truncated variable-length integer");
    let value = BigInt(this.data[this.pos] & 0x3f);
    for (let i = 1; i < length; i++) value = (value << 8n) | BigInt(this.data[this.pos + i]);
    this.pos += length;
    // lengths beyond what a page can hold are refused by take(); numbers stay exact up to 2^53
    return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
  }

  take(length) {
    if (length > this.data.length - this.pos) throw new ProtocolError("length points past the end of the message");
    this.pos += length;
    return this.data.subarray(this.pos - length, this.pos);
  }

  prefixed() {
    return this.take(this.varint());
  }
}

// -- validation, as bhttp.py does it in both directions -------------------------------------------

function checkName(text) {
  if (!LOWER_TCHAR.test(text)) throw new ProtocolError(`invalid field name ${JSON.stringify(text.slice(0, 32))}`);
  return text;
}

function checkValue(text) {
  if (/[\0\r\n]/.test(text) || /^[ \t]|[ \t]$/.test(text)) throw new ProtocolError("invalid field value");
  return text;
}

function checkTarget(text, what) {
  if (!VISIBLE_ASCII.test(text)) throw new ProtocolError(`invalid ${what}`);
  return text;
}

// -- encoding: the known-length request (framing indicator 0) --------------------------------------

function prefixed(bytes) {
  return concat(encodeVarint(bytes.length), bytes);
}

function encodeFields(fields) {
  if (fields.length > MAX_FIELDS) throw new ProtocolError(`more than ${MAX_FIELDS} fields in a field section`);
  const lines = fields.map(([name, value]) =>
    concat(prefixed(ascii(checkName(name), "field name")), prefixed(latin1(checkValue(value), "field value"))),
  );
  return prefixed(concat(...lines));
}

/** The known-length encoding of a request: {method, scheme, authority, path, headers, content}. */
export function encodeRequest({ method, scheme, authority, path, headers = [], content = new Uint8Array(0) }) {
  if (!TCHAR.test(method)) throw new ProtocolError(`invalid method ${JSON.stringify(method)}`);
  const control = [method, checkTarget(scheme, "scheme"), checkTarget(authority, "authority"), checkTarget(path, "path")];
  return concat(
    encodeVarint(0),
    ...control.map((part) => prefixed(ascii(part, "control data"))),
    encodeFields(headers),
    prefixed(content),
    encodeFields([]),
  );
}

/** Padmé (Nikitin et al., "Reducing metadata leakage from encrypted files and communication with
 * PURBs", 2019): the length a message of ``length`` bytes is padded to. */
export function padmeLength(length) {
  if (length < 2) return length;
  const e = length.toString(2).length - 1; // floor(log2 L), exactly
  const s = e.toString(2).length; // floor(log2 E) + 1
  const mask = 2 ** (e - s) - 1;
  return Math.floor((length + mask) / (mask + 1)) * (mask + 1); // (L + mask) & ~mask, past 2^31 too
}

/** ``message`` followed by zero bytes up to its Padmé length (RFC 9292 §3.8 padding). */
export function pad(message) {
  const out = new Uint8Array(padmeLength(message.length));
  out.set(message);
  return out;
}

// -- decoding: responses in both framings (§3.1, §3.2), truncation and padding (§3.8) --------------

function readFields(r, indeterminate) {
  const section = indeterminate ? r : new Reader(r.prefixed());
  const fields = [];
  while (indeterminate || !section.atEnd()) {
    const nameLength = section.varint();
    if (nameLength === 0) {
      if (indeterminate) break;
      throw new ProtocolError("empty field name");
    }
    if (fields.length === MAX_FIELDS) throw new ProtocolError(`more than ${MAX_FIELDS} fields in a field section`);
    const name = checkName(fromLatin1(section.take(nameLength)));
    fields.push([name, checkValue(fromLatin1(section.prefixed()))]);
  }
  return fields;
}

function readContent(r, indeterminate) {
  if (!indeterminate) return r.prefixed().slice();
  const chunks = [];
  let length;
  while ((length = r.varint()) !== 0) {
    if (chunks.length === MAX_CONTENT_CHUNKS) throw new ProtocolError(`more than ${MAX_CONTENT_CHUNKS} content chunks`);
    chunks.push(r.take(length));
  }
  return concat(...chunks);
}

/** Parse a binary HTTP response: {status, headers, content, trailers, informational}. Trailing zero
 * bytes are padding; a non-zero byte after the message makes it invalid. */
export function decodeResponse(data) {
  const r = new Reader(data);
  const indicator = r.varint();
  if (indicator > 3) throw new ProtocolError(`unknown framing indicator ${indicator}`);
  if ((indicator & 1) !== 1) throw new ProtocolError("expected a response");
  const indeterminate = indicator >= 2;
  const informational = [];
  let status;
  while ((status = r.varint()) >= 100 && status <= 199) {
    if (informational.length === MAX_INFORMATIONAL) {
      throw new ProtocolError(`more than ${MAX_INFORMATIONAL} informational responses`);
    }
    informational.push({ status, headers: readFields(r, indeterminate) });
  }
  if (status < 200 || status > 599) throw new ProtocolError(`status code ${status} not in 100..599`);
  const headers = readFields(r, indeterminate);
  const content = r.atEnd() ? new Uint8Array(0) : readContent(r, indeterminate);
  const trailers = r.atEnd() ? [] : readFields(r, indeterminate);
  if (r.data.subarray(r.pos).some((b) => b !== 0)) throw new ProtocolError("non-zero byte after the end of the message");
  return { status, headers, content, trailers, informational };
}

export function header(message, name) {
  const wanted = name.toLowerCase();
  const found = message.headers.find(([key]) => key.toLowerCase() === wanted);
  return found ? found[1] : null;
}
