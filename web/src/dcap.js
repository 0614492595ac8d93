// Intel SGX and TDX DCAP quotes, as attestation/dcap.py verifies them: the quote's framing checked
// exactly, the collateral's dates read, then dcap-qvl (Phala's Rust verifier, compiled to WebAssembly
// and inlined in the page, Intel's SGX Root CA pinned in it) verifies signatures, certificate chains,
// CRLs, the QE identity and the TCB level, and the TCB status becomes a security level.

import initVerifier, { js_verify as dcapQvlVerify } from "@phala/dcap-qvl-web";
import verifierWasm from "@phala/dcap-qvl-web/dcap-qvl-web_bg.wasm";

import { fromHex, fromLatin1, toHex as hex } from "./bytes.js";
import { formatDuration, isoSeconds } from "./constraints.js";
import { certificateExpiry, crlNextUpdate, pemCertificates } from "./der.js";

export class AttestationError extends Error {}

export const TCB_LEVELS = {
  UpToDate: "SECURE",
  SWHardeningNeeded: "STALE",
  ConfigurationNeeded: "STALE",
  ConfigurationAndSWHardeningNeeded: "STALE",
  OutOfDate: "STALE",
  OutOfDateConfigurationNeeded: "STALE",
};
const SGX_FLAG_DEBUG = 0x02; // SGX ATTRIBUTES.FLAGS bit 1
const TDX_ATTR_DEBUG = 0x01; // TDX TD_ATTRIBUTES bit 0
const MAX_COLLATERAL_BYTES = 1024 * 1024;
const MAX_QUOTE_BYTES = 64 * 1024;
const BEFORE_EXPIRY_MS = 1000;

// Quote framing (dcap.py cites Intel's quote format documents); integers little-endian.
const HEADER_SIZE = 48;
const ATT_KEY_TYPE_ECDSA_P256 = 2;
const TEE_TYPE_SGX = 0x00000000;
const TEE_TYPE_TDX = 0x00000081;
const SGX_REPORT_BODY_SIZE = 384;
const TD_REPORT10_SIZE = 584;
const ECDSA_SIGNATURE_SIZE = 64;
const ECDSA_PUBLIC_KEY_SIZE = 64;
const QE_REPORT_SIGNATURE_SIZE = 64;
const CERT_TYPE_PCK_CHAIN = 5;
const CERT_TYPE_QE_REPORT = 6;

class Fields {
  constructor(view, at, end, within) {
    Object.assign(this, { view, at, end, within });
  }

  take(size, what) {
    if (this.at + size > this.end) {
      throw new AttestationError(
        `DCAP quote ${what} (${size} bytes) runs past the end of its ${this.within} (${this.end - this.at} bytes left)`,
      );
    }
    this.at += size;
    return [this.at - size, this.at];
  }

  u16(what) {
    return this.view.getUint16(this.take(2, what)[0], true);
  }

  u32(what) {
    return this.view.getUint32(this.take(4, what)[0], true);
  }

  certificationData(certType, what) {
    const found = this.u16(`${what} header`);
    const size = this.u32(`${what} header`);
    if (found !== certType) {
      throw new AttestationError(`DCAP quote certification data type is ${found}, expected ${certType} (${what})`);
    }
    if (size !== this.end - this.at) {
      throw new AttestationError(
        `DCAP quote ${what} (certification data type ${certType}) declares ${size} bytes, ` +
          `but ${this.end - this.at} remain in its ${this.within}`,
      );
    }
    return new Fields(this.view, this.at, this.end, `${what} (type ${certType})`);
  }
}

/** The framing of a quote, checked exactly (dcap.py parse_quote_layout): {version, tee, pckChain}. */
export function parseQuoteLayout(quote) {
  if (quote.length < HEADER_SIZE) {
    throw new AttestationError(`DCAP quote is ${quote.length} bytes, shorter than its ${HEADER_SIZE}-byte header`);
  }
  const view = new DataView(quote.buffer, quote.byteOffset, quote.byteLength);
  const version = view.getUint16(0, true);
  const attKeyType = view.getUint16(2, true);
  const teeType = view.getUint32(4, true);
  if (attKeyType !== ATT_KEY_TYPE_ECDSA_P256) {
    throw new AttestationError(
      `DCAP quote attestation key type ${attKeyType} is not ECDSA-256-with-P-256 (${ATT_KEY_TYPE_ECDSA_P256})`,
    );
  }
  const fields = new Fields(view, HEADER_SIZE, quote.length, "quote");
  let tee;
  if (version === 3 && teeType === TEE_TYPE_SGX) {
    tee = "sgx";
    fields.take(SGX_REPORT_BODY_SIZE, "SGX report body");
  } else if (version === 4 && teeType === TEE_TYPE_TDX) {
    tee = "tdx";
    fields.take(TD_REPORT10_SIZE, "TD report body");
  } else if (version === 5 && teeType === TEE_TYPE_TDX) {
    throw new AttestationError(
      "DCAP quote version 5 (TDX) cannot be verified in this page, whose verifier reads versions 3 and 4: " +
        "verify it with the command line (enclave-infer attest URL CONSTRAINT)",
    );
  } else {
    throw new AttestationError(
      `DCAP quote version ${version} with TEE type 0x${teeType.toString(16)} is not supported ` +
        "(SGX: version 3, TEE type 0x0; TDX: version 4, TEE type 0x81)",
    );
  }
  const length = fields.u32("signature data length");
  const start = fields.at;
  const end = start + length;
  if (end > quote.length) {
    throw new AttestationError(
      `DCAP quote signature data length ${length} runs past the quote's end (${quote.length - start} bytes left)`,
    );
  }
  if (quote.subarray(end).some((b) => b !== 0)) {
    throw new AttestationError(
      `DCAP quote has ${quote.length - end} byte(s) after its ${length}-byte signature data that are not zero padding`,
    );
  }
  let data = new Fields(view, start, end, "signature data");
  data.take(ECDSA_SIGNATURE_SIZE, "ISV report signature");
  data.take(ECDSA_PUBLIC_KEY_SIZE, "attestation key");
  if (version >= 4) data = data.certificationData(CERT_TYPE_QE_REPORT, "QE report certification data");
  data.take(SGX_REPORT_BODY_SIZE, "QE report");
  data.take(QE_REPORT_SIGNATURE_SIZE, "QE report signature");
  data.take(data.u16("QE authentication data size"), "QE authentication data");
  const chain = data.certificationData(CERT_TYPE_PCK_CHAIN, "PCK certificate chain");
  if (chain.at === chain.end) {
    throw new AttestationError("DCAP quote PCK certificate chain (certification data type 5) is empty");
  }
  return { version, tee, pckChain: quote.slice(chain.at, chain.end) };
}

function rfc3339(value, what) {
  const m =
    typeof value === "string" &&
    /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(value);
  if (!m) throw new AttestationError(`collateral's ${what} is not an RFC 3339 time`);
  const ms = Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6], Math.floor(Number(m[7] || 0) * 1000));
  const offset = m[8] === "Z" ? 0 : (m[8][0] === "-" ? -1 : 1) * (Number(m[8].slice(1, 3)) * 60 + Number(m[8].slice(4)));
  return new Date(ms - offset * 60000);
}

function jsonObject(text, what) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new AttestationError(`${what} is not JSON`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new AttestationError(`${what} is not a JSON object`);
  }
  return doc;
}

/** What the collateral says of its own validity, read from the same text dcap-qvl verifies. */
export function collateralDates(doc) {
  const issueDates = {};
  const nextUpdates = {};
  const numbers = [];
  for (const [key, name] of [["tcb_info", "TCB info"], ["qe_identity", "QE identity"]]) {
    const signed = jsonObject(typeof doc[key] === "string" ? doc[key] : "", name);
    issueDates[name] = rfc3339(signed.issueDate, `${name} issueDate`);
    nextUpdates[name] = rfc3339(signed.nextUpdate, `${name} nextUpdate`);
    const number = signed.tcbEvaluationDataNumber;
    if (!Number.isInteger(number) || number < 0 || number > 0xffffffff) {
      throw new AttestationError(`collateral's ${name} has no tcbEvaluationDataNumber`);
    }
    numbers.push(number);
  }
  for (const [key, name] of [["pck_crl", "PCK CRL"], ["root_ca_crl", "root CA CRL"]]) {
    let next = null;
    try {
      const der = fromHex(doc[key]);
      next = der && der.length ? crlNextUpdate(der) : null;
    } catch {
      next = null;
    }
    if (!next) throw new AttestationError(`collateral's ${name} is not a DER CRL (hex) with a nextUpdate`);
    nextUpdates[name] = next;
  }
  const issuerChains = ["pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"].map((k) => doc[k]);
  if (!issuerChains.every((c) => typeof c === "string")) throw new AttestationError("collateral lacks an issuer chain");
  return { issueDates, nextUpdates, evaluationDataNumbers: numbers, issuerChains };
}

/** Verifying as of before ``nextUpdate`` needs the collateral issued by then, and every certificate
 * still valid ``now``: a grace period covers Intel's publication cycle, never an expired certificate. */
function checkVerifiableWhenStale(dates, layout, first, nextUpdate, now) {
  const [name, latest] = Object.entries(dates.issueDates).reduce((a, b) => (b[1] > a[1] ? b : a));
  if (latest >= nextUpdate) {
    throw new AttestationError(
      `DCAP collateral is never current as a whole: the ${name} was issued at ${isoSeconds(latest)}` +
        `${latest > now ? ", in the future," : ""} and the ${first} expired at ${isoSeconds(nextUpdate)}`,
    );
  }
  for (const pem of [fromLatin1(layout.pckChain), ...dates.issuerChains]) {
    let certificates;
    try {
      certificates = pemCertificates(pem).map(certificateExpiry);
    } catch {
      throw new AttestationError("a certificate chain of the quote or collateral does not parse");
    }
    for (const { notAfter, commonName } of certificates) {
      if (now > notAfter) {
        throw new AttestationError(
          `certificate '${commonName}' expired at ${isoSeconds(notAfter)}, before ${isoSeconds(now)}: stale ` +
            "collateral is verified as of its expiry, but its certificates must be valid now",
        );
      }
    }
  }
}

let verifierReady = null;

async function verifier() {
  verifierReady ??= initVerifier({ module_or_path: verifierWasm });
  await verifierReady;
  return dcapQvlVerify;
}

function hexField(doc, key) {
  const raw = typeof doc[key] === "string" ? fromHex(doc[key]) : Array.isArray(doc[key]) ? Uint8Array.from(doc[key]) : null;
  if (!raw || !raw.length) throw new AttestationError(`dcap-qvl report lacks ${key}`);
  return raw;
}

function intField(doc, key) {
  if (!Number.isInteger(doc[key])) throw new AttestationError(`dcap-qvl report lacks ${key}`);
  return doc[key];
}

/** Verify ``quote`` against ``collateral`` (dcap-qvl's QuoteCollateralV3 JSON, bytes) at ``now``.
 * Returns {report, tcbStatus, advisoryIds, measurements}; throws AttestationError. */
export async function verifyQuote(quote, collateral, now) {
  if (!quote.length || quote.length > MAX_QUOTE_BYTES) throw new AttestationError("quote is empty or too large");
  if (collateral.length > MAX_COLLATERAL_BYTES) throw new AttestationError("collateral is too large");
  // 1. framing, on bytes
  const layout = parseQuoteLayout(quote);
  // 2. the collateral's dates
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(collateral);
  } catch {
    throw new AttestationError("collateral is not dcap-qvl QuoteCollateralV3 JSON");
  }
  const doc = jsonObject(text, "collateral");
  const dates = collateralDates(doc);
  const issuedAt = dates.issueDates["TCB info"]; // when Intel last assessed this platform's TCB
  // 3. the time to verify as of: now, or just before the collateral's earliest nextUpdate
  const [first, nextUpdate] = Object.entries(dates.nextUpdates).reduce((a, b) => (b[1] < a[1] ? b : a));
  let verifiedAt = now;
  let expired = null;
  if (now >= nextUpdate) {
    verifiedAt = new Date(nextUpdate.getTime() - BEFORE_EXPIRY_MS);
    expired = now.getTime() - nextUpdate.getTime();
    checkVerifiableWhenStale(dates, layout, first, nextUpdate, now);
  }
  // 4. dcap-qvl, with Intel's root as it pins it
  let verified;
  try {
    verified = (await verifier())(quote, doc, BigInt(Math.floor(verifiedAt.getTime() / 1000)));
  } catch (exc) {
    const reason = String(exc?.message ?? exc).replace(/^Verification failed: /, "").split("\n")[0].slice(0, 200);
    throw new AttestationError(`DCAP quote did not verify: ${reason}`);
  }
  // 5. the TCB status as a security level
  const status = verified?.status;
  if (!Object.hasOwn(TCB_LEVELS, status)) throw new AttestationError(`TCB status '${status}' is not acceptable`);
  const advisoryIds = (verified.advisory_ids ?? []).map(String);
  const reportDoc = verified.report;
  if (typeof reportDoc !== "object" || reportDoc === null || Object.keys(reportDoc).length !== 1) {
    throw new AttestationError("dcap-qvl returned no report");
  }
  const [[kind, body]] = Object.entries(reportDoc);
  let level = TCB_LEVELS[status];
  let levelReason = `TCB status ${status}` + (advisoryIds.length ? ` (advisories ${advisoryIds.join(", ")})` : "");
  let report;
  let measurements;
  let debug;
  if (kind === "SgxEnclave") {
    debug = Boolean(hexField(body, "attributes")[0] & SGX_FLAG_DEBUG);
    const mrenclave = hexField(body, "mr_enclave");
    const mrsigner = hexField(body, "mr_signer");
    measurements = { mrenclave: hex(mrenclave), mrsigner: hex(mrsigner) };
    report = {
      tee: "sgx",
      codeHash: hex(mrenclave),
      signer: hex(mrsigner),
      productId: intField(body, "isv_prod_id"),
      securityVersion: intField(body, "isv_svn"),
      reportData: hexField(body, "report_data"),
    };
  } else if (kind === "TD10" || kind === "TD15") {
    const td = kind === "TD15" ? (body.base ?? body) : body;
    debug = Boolean(hexField(td, "td_attributes")[0] & TDX_ATTR_DEBUG);
    const mrtd = hexField(td, "mr_td");
    measurements = { mrtd: hex(mrtd) };
    for (let i = 0; i < 4; i++) measurements[`rtmr${i}`] = hex(hexField(td, `rt_mr${i}`));
    report = { tee: "tdx", codeHash: hex(mrtd), signer: "", productId: 0, securityVersion: 0, reportData: hexField(td, "report_data") };
  } else {
    throw new AttestationError(`unsupported report type '${kind}'`);
  }
  if (report.tee !== layout.tee) {
    throw new AttestationError(`dcap-qvl read a ${kind} report from a ${layout.tee.toUpperCase()} quote`);
  }
  if (debug) {
    level = "INSECURE";
    levelReason = "debug enclave: the host can read its memory";
  }
  if (expired !== null) {
    levelReason +=
      `; the collateral expired ${formatDuration(expired)} ago (the ${first}'s nextUpdate ` +
      `${isoSeconds(nextUpdate)}) and was verified as of ${isoSeconds(verifiedAt)}`;
  }
  const dcapCollateral = {
    tcbInfoEvaluationDataNumber: dates.evaluationDataNumbers[0],
    qeIdentityEvaluationDataNumber: dates.evaluationDataNumbers[1],
    nextUpdate,
    nextUpdateOf: first,
    verifiedAt,
    expiredMs: expired,
  };
  return {
    report: { ...report, debug, level, levelReason, issuedAt, snpTcb: null, dcapCollateral },
    tcbStatus: status,
    advisoryIds,
    measurements,
  };
}
