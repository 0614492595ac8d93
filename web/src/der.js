// The little DER that dcap.js reads beside dcap-qvl: a CRL's nextUpdate and a certificate's notAfter
// and common name (RFC 5280). Nothing here is verified: dcap-qvl verifies the signatures.

const SEQUENCE = 0x30;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
const OID_COMMON_NAME = "2.5.4.3";

export class DerError extends Error {}

/** The TLV at ``data[at]``: {tag, start (of the value), end}. */
function tlv(data, at, end = data.length) {
  if (at + 2 > end) throw new DerError("truncated DER");
  const tag = data[at];
  let length = data[at + 1];
  let start = at + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count < 1 || count > 4 || start + count > end) throw new DerError("bad DER length");
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + data[start + i];
    start += count;
  }
  if (start + length > end) throw new DerError("DER value runs past its container");
  return { tag, start, end: start + length };
}

function children(data, node) {
  const out = [];
  for (let at = node.start; at < node.end; ) {
    const child = tlv(data, at, node.end);
    out.push(child);
    at = child.end;
  }
  return out;
}

function expect(node, tag, what) {
  if (node.tag !== tag) throw new DerError(`${what} is not where it should be`);
  return node;
}

function time(data, node) {
  const text = String.fromCharCode(...data.subarray(node.start, node.end));
  let m;
  if (node.tag === UTC_TIME && (m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text))) {
    const year = Number(m[1]) >= 50 ? 1900 + Number(m[1]) : 2000 + Number(m[1]);
    return new Date(Date.UTC(year, m[2] - 1, m[3], m[4], m[5], m[6]));
  }
  if (node.tag === GENERALIZED_TIME && (m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text))) {
    return new Date(Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6]));
  }
  throw new DerError("not a DER time");
}

/** A CRL's nextUpdate (RFC 5280 §5.1), or null when it has none. */
export function crlNextUpdate(der) {
  const list = expect(tlv(der, 0), SEQUENCE, "CertificateList");
  const tbs = expect(children(der, list)[0], SEQUENCE, "TBSCertList");
  const fields = children(der, tbs);
  let i = fields[0]?.tag === 0x02 ? 1 : 0; // version, optional
  i += 2; // signature algorithm, issuer
  const thisUpdate = fields[i];
  const nextUpdate = fields[i + 1];
  if (!thisUpdate) throw new DerError("CRL without thisUpdate");
  time(der, thisUpdate);
  if (!nextUpdate || (nextUpdate.tag !== UTC_TIME && nextUpdate.tag !== GENERALIZED_TIME)) return null;
  return time(der, nextUpdate);
}

/** A certificate's notAfter and subject common name (RFC 5280 §4.1). */
export function certificateExpiry(der) {
  const cert = expect(tlv(der, 0), SEQUENCE, "Certificate");
  const tbs = expect(children(der, cert)[0], SEQUENCE, "TBSCertificate");
  const fields = children(der, tbs);
  const i = fields[0]?.tag === 0xa0 ? 1 : 0; // [0] version, optional
  const validity = expect(fields[i + 3], SEQUENCE, "Validity");
  const [, notAfter] = children(der, validity);
  return { notAfter: time(der, notAfter), commonName: commonName(der, fields[i + 4]) };
}

function commonName(der, subject) {
  for (const set of children(der, subject)) {
    for (const pair of children(der, set)) {
      const [oid, value] = children(der, pair);
      if (oid && value && oidText(der.subarray(oid.start, oid.end)) === OID_COMMON_NAME) {
        return new TextDecoder().decode(der.subarray(value.start, value.end));
      }
    }
  }
  return "";
}

function oidText(bytes) {
  const parts = [Math.floor(bytes[0] / 40), bytes[0] % 40];
  let value = 0;
  for (const b of bytes.subarray(1)) {
    value = value * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      parts.push(value);
      value = 0;
    }
  }
  return parts.join(".");
}

/** The DER certificates of a PEM bundle. */
export function pemCertificates(text) {
  const out = [];
  const re = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;
  for (const m of text.matchAll(re)) {
    const raw = atob(m[1].replace(/\s+/g, ""));
    out.push(Uint8Array.from(raw, (c) => c.charCodeAt(0)));
  }
  if (!out.length) throw new DerError("no certificate in PEM");
  return out;
}
