// The attestation document of GET /v1/attestation and its verification, as attestation/evidence.py
// does it: (1) parse the document, (2) verify the platform's evidence, (3) check that its report data
// binds the key configuration, the receipt key, the enclave configuration and our nonce, (4) check the
// user's constraint. Every failure throws; a return value means every step passed.

import { concat, equal, fromBase64, fromHex, sha256, sha512, toHex, utf8 } from "./bytes.js";
import { check } from "./constraints.js";
import { AttestationError, verifyQuote } from "./dcap.js";

export { AttestationError };

export const VERSION = 2;
const MAX_DOCUMENT_BYTES = 256 * 1024;
const BINDING_LABEL = concat(utf8("enclave-infer attestation v2"), Uint8Array.of(0));
const RECEIPT_KEY_BYTES = 32;
const MIN_NONCE_BYTES = 16;
const MAX_NONCE_BYTES = 64;
export const SIMULATION_FORMAT = "enclave-infer simulation evidence v1";
export const SIMULATION_REASON = "simulation mode: no hardware root of trust, the evidence is unsigned";
export const SNP_REFUSAL =
  "SEV-SNP evidence is not verified in this page: verify the service with the command line " +
  "(enclave-infer attest URL CONSTRAINT, or enclave-infer verify-evidence)";
export const VTPM_REFUSAL =
  "vTPM evidence (a TPM quote and its boot's event log) is not verified in this page: verify the service " +
  "with the command line (enclave-infer attest URL CONSTRAINT)";

/** The document: {tee, evidence, config, collateral, receiptKey}, the last three possibly empty. */
export function decodeDocument(data) {
  if (data.length > MAX_DOCUMENT_BYTES) throw new AttestationError("attestation document too large");
  const malformed = new AttestationError("malformed attestation document");
  let doc;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(data));
  } catch {
    throw malformed;
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || doc.version !== VERSION) throw malformed;
  const { tee, evidence, config, collateral = "", receipt_key: receiptKey = "" } = doc;
  if (![tee, evidence, config, collateral, receiptKey].every((v) => typeof v === "string")) throw malformed;
  const decoded = [evidence, config, collateral, receiptKey].map(fromBase64);
  if (decoded.some((v) => v === null)) throw malformed;
  return { tee, evidence: decoded[0], config: decoded[1], collateral: decoded[2], receiptKey: decoded[3] };
}

/** The 64 bytes an honest enclave puts in its report data (attestation/report.py). */
export async function attestationBinding(keyConfig, receiptKey, configDigest, nonce) {
  if (receiptKey.length !== RECEIPT_KEY_BYTES) throw new AttestationError(`receipt key must be ${RECEIPT_KEY_BYTES} bytes`);
  if (keyConfig.length > 0xffff) throw new AttestationError("key configuration too long");
  if (nonce.length < MIN_NONCE_BYTES || nonce.length > MAX_NONCE_BYTES) {
    throw new AttestationError(`nonce must be ${MIN_NONCE_BYTES} to ${MAX_NONCE_BYTES} bytes`);
  }
  return sha512(
    concat(
      BINDING_LABEL,
      Uint8Array.of(keyConfig.length >> 8, keyConfig.length & 0xff),
      keyConfig,
      Uint8Array.of(receiptKey.length),
      receiptKey,
      configDigest,
      Uint8Array.of(nonce.length),
      nonce,
    ),
  );
}

// -- simulation evidence (attestation/simulation.py): unsigned JSON, always INSECURE -------------

function simHex(doc, key, size) {
  const raw = fromHex(doc[key]);
  if (!raw || raw.length !== size) throw new AttestationError(`simulation evidence: ${key} must be ${size} bytes of hex`);
  return raw;
}

function simInt(doc, key) {
  const v = doc[key];
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new AttestationError(`simulation evidence: ${key} must be an integer 0..65535`);
  return v;
}

export function verifySimulation(evidence) {
  let doc;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(evidence));
  } catch {
    throw new AttestationError("simulation evidence is not JSON");
  }
  if (typeof doc !== "object" || doc === null || doc.format !== SIMULATION_FORMAT) {
    throw new AttestationError("not simulation evidence of a known version");
  }
  if (typeof doc.debug !== "boolean") throw new AttestationError("simulation evidence: debug must be a boolean");
  const issuedAt = parseTime(doc.issued_at);
  if (!issuedAt) throw new AttestationError("simulation evidence: issued_at must be an RFC 3339 time with a zone");
  return {
    tee: "simulation",
    codeHash: toHex(simHex(doc, "code_hash", 32)),
    signer: toHex(simHex(doc, "signer", 32)),
    productId: simInt(doc, "product_id"),
    securityVersion: simInt(doc, "security_version"),
    debug: doc.debug,
    reportData: simHex(doc, "report_data", 64),
    level: "INSECURE",
    levelReason: SIMULATION_REASON,
    issuedAt,
    snpTcb: null,
    dcapCollateral: null,
  };
}

/** An ISO 8601 time with a zone, as Python's datetime.isoformat() writes it; null when not. */
function parseTime(value) {
  const m =
    typeof value === "string" &&
    /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})$/.exec(value);
  if (!m) return null;
  const ms = Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6], Math.floor(Number(`0.${m[7] || 0}`) * 1000));
  const zone = m[8] === "Z" ? 0 : (m[8][0] === "-" ? -1 : 1) * (Number(m[8].slice(1, 3)) * 60 + Number(m[8].slice(4)));
  return new Date(ms - zone * 60000);
}

// -- the measured enclave configuration -------------------------------------------------------------

/** Python's json.dumps(doc, sort_keys=True, separators=(",", ":")), for the values a configuration holds. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${canonical(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }
  if (typeof value === "number" && !Number.isInteger(value)) throw new AttestationError("enclave configuration holds a fraction");
  return JSON.stringify(value);
}

/** The configuration the evidence binds: parsed, in canonical form, with the owner key id. */
export async function parseConfig(bytes) {
  const invalid = (why) => new AttestationError(`enclave configuration in the evidence is invalid: ${why}`);
  let doc;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("enclave configuration is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw invalid("enclave configuration must be a table/object");
  if (!equal(utf8(canonical(doc)), bytes)) throw invalid("enclave configuration is not in canonical form");
  const ownerKey = fromHex(doc.owner_public_key);
  if (!ownerKey || ownerKey.length !== 32) throw invalid("owner_public_key must be a raw 32-byte Ed25519 public key");
  const padding = typeof doc.padding === "object" && doc.padding !== null && doc.padding.enabled === true;
  return { doc, digest: await sha256(bytes), ownerKeyId: toHex(await sha256(ownerKey)), padding };
}

// -- the four steps -------------------------------------------------------------------------------------

async function platformReport(tee, evidence, collateral, now) {
  let report;
  let verdict = null;
  if (tee === "simulation") {
    report = verifySimulation(evidence);
  } else if (tee === "sgx" || tee === "tdx") {
    if (!collateral.length) {
      throw new AttestationError(
        "DCAP evidence without collateral: the host attached none; verify it with the command line " +
          "(enclave-infer attest URL CONSTRAINT --collateral FILE or --pccs URL)",
      );
    }
    verdict = await verifyQuote(evidence, collateral, now);
    report = verdict.report;
  } else if (tee === "sev-snp") {
    throw new AttestationError(SNP_REFUSAL);
  } else if (tee === "vtpm") {
    throw new AttestationError(VTPM_REFUSAL);
  } else {
    throw new AttestationError(`unsupported TEE type '${tee}'`);
  }
  if (report.tee !== tee) throw new AttestationError(`the document says ${tee} evidence but it is ${report.tee} evidence`);
  return { report, verdict };
}

/** Steps 1 to 4. Returns {report, config, keyConfig, receiptKey, verdict}; ``verdict`` is the DCAP
 * verdict (TCB status, advisories, measurements) for SGX and TDX evidence, else null. */
export async function verify(document, { keyConfig, nonce, constraint, now }) {
  const evidence = decodeDocument(document);
  const { report, verdict } = await platformReport(evidence.tee, evidence.evidence, evidence.collateral, now);
  const config = await parseConfig(evidence.config);
  const expected = await attestationBinding(keyConfig, evidence.receiptKey, config.digest, nonce);
  if (!equal(report.reportData, expected)) {
    throw new AttestationError(
      "evidence is not bound to this key configuration, configuration and nonce (stale, replayed or substituted)",
    );
  }
  report.ownerKeyId = config.ownerKeyId;
  check(constraint, report, now);
  return { report, config, keyConfig, receiptKey: evidence.receiptKey, verdict };
}
