// The enclave constraint language, as attestation/constraints.py parses and checks it, with the same
// messages. parse() throws UsageError; check() throws ConstraintError naming the first requirement a
// verified report does not meet. Fails closed: unknown or malformed tokens are errors.

import { pyRepr } from "./bytes.js";

export class UsageError extends Error {}
export class ConstraintError extends Error {}

export const LEVELS = { INSECURE: 0, STALE: 1, SECURE: 2 };
const HEX64 = /^[0-9a-fA-F]{64}$/;
const CODE_HASH = /^(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{96})$/;
const UINT16_MAX = 0xffff;
const UINT32_MAX = 0xffffffff;
// SNPTCB: component names, as a floor names them, to (report field, what a refusal calls it)
const SNP_TCB_COMPONENTS = {
  bl: ["bootloader", "boot loader"],
  tee: ["tee", "TEE (PSP OS)"],
  snp: ["snp", "SNP firmware"],
  ucode: ["microcode", "microcode"],
  fmc: ["fmc", "FMC"],
};
const SNP_TCB_FLOOR = /^[a-z]+=\d{1,3}(?:,[a-z]+=\d{1,3})*$/;
// ISO 8601 durations as Java's Duration prints them: PnDTnHnMnS (no weeks, months or years)
const DURATION = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/;
const SINGLE = ["PROD", "REVOKE", "SEC", "EXPIRE", "SNPTCB", "TCBEVAL", "GRACE"];
// Pins of measured boots, which need the boot's event log and the release's reference measurements:
// the command line checks them, this page refuses them rather than ignore them.
const MEASURED_BOOT_PIN = /^(?:IMAGE|PCR\d{1,2}|RTMR\d)$/;
export const PAGE_CHECKS =
  "this page checks C:, S:, PROD:, REVOKE:, SEC:, EXPIRE:, OWNER:, TCBEVAL: and GRACE: against simulation, " +
  "SGX and TDX evidence";
export const MEASURED_BOOT_REFUSAL =
  `${PAGE_CHECKS}; IMAGE:, PCRn: and RTMRn: need the boot's event log and the release's measurements: ` +
  "verify the service with the command line (enclave-infer attest URL CONSTRAINT --measurements FILE)";

/** Parse a constraint; throws UsageError with a one-line reason. */
export function parse(text) {
  const tokens = text.split(/\s+/).filter(Boolean);
  if (!tokens.length) {
    throw new UsageError("empty enclave constraint: give at least C:<code hash> or S:<signer> PROD:<id>");
  }
  const codeHashes = new Set();
  const signers = new Set();
  const owners = new Set();
  const single = {};
  for (const token of tokens) {
    const colon = token.indexOf(":");
    const key = (colon < 0 ? token : token.slice(0, colon)).toUpperCase();
    const value = colon < 0 ? "" : token.slice(colon + 1);
    if (colon < 0 || !value) throw new UsageError(`malformed constraint token ${pyRepr(token)}: expected KEY:VALUE`);
    if (MEASURED_BOOT_PIN.test(key)) {
      throw new UsageError(`${key}: is not checked in this page: ${MEASURED_BOOT_REFUSAL}`);
    } else if (key === "C") {
      if (!CODE_HASH.test(value)) {
        throw new UsageError(`C: takes 64 hex digits (or 96 for a TDX MRTD), got ${pyRepr(value)}`);
      }
      codeHashes.add(value.toLowerCase());
    } else if (key === "S" || key === "OWNER") {
      if (!HEX64.test(value)) throw new UsageError(`${key}: takes 64 hex digits, got ${pyRepr(value)}`);
      (key === "S" ? signers : owners).add(value.toLowerCase());
    } else if (SINGLE.includes(key)) {
      if (key in single) throw new UsageError(`${key}: given more than once`);
      single[key] = value;
    } else {
      throw new UsageError(`unknown constraint token ${pyRepr(token)}`);
    }
  }
  if (!codeHashes.size && !signers.size) {
    throw new UsageError("constraint names no enclave: give C:<code hash>, S:<signer> PROD:<id> or IMAGE:<release>");
  }
  if (signers.size && !("PROD" in single)) throw new UsageError("S: requires PROD: (a signer signs many products)");
  let minLevel = "SECURE";
  if ("SEC" in single) {
    minLevel = single.SEC.toUpperCase();
    if (!(minLevel in LEVELS)) {
      throw new UsageError(`SEC: takes INSECURE, STALE or SECURE, got ${pyRepr(single.SEC)}`);
    }
  }
  return {
    codeHashes,
    signers,
    productId: uint("PROD", single.PROD, UINT16_MAX, 5),
    minSecurityVersion: uint("REVOKE", single.REVOKE, UINT16_MAX, 5),
    minLevel,
    maxAgeMs: "EXPIRE" in single ? duration("EXPIRE", single.EXPIRE) : null,
    ownerKeyIds: owners,
    snpTcbFloor: "SNPTCB" in single ? snpTcbFloor(single.SNPTCB.toLowerCase()) : [],
    minTcbEvaluation: uint("TCBEVAL", single.TCBEVAL, UINT32_MAX, 10),
    collateralGraceMs: "GRACE" in single ? duration("GRACE", single.GRACE) : null,
  };
}

/** Throw ConstraintError unless ``report`` (attestation.js) satisfies every requirement at ``now``. */
export function check(c, report, now) {
  const byCode = c.codeHashes.has(report.codeHash);
  const bySigner = c.signers.has(report.signer) && report.productId === c.productId;
  if (!(byCode || bySigner)) {
    const orCode = c.codeHashes.size ? " and the code hash matches no C: value" : "";
    if (c.codeHashes.size && !c.signers.size) {
      throw new ConstraintError(`code hash ${report.codeHash.toUpperCase()} is not one of the accepted C: values`);
    }
    if (c.signers.size && !c.signers.has(report.signer)) {
      throw new ConstraintError(`signer ${report.signer.toUpperCase()} is not one of the accepted S: values${orCode}`);
    }
    throw new ConstraintError(`product id ${report.productId} is not PROD:${c.productId}${orCode}`);
  }
  if (c.productId !== null && report.productId !== c.productId) {
    throw new ConstraintError(`product id ${report.productId} is not PROD:${c.productId}`);
  }
  if (c.minSecurityVersion !== null && report.securityVersion < c.minSecurityVersion) {
    throw new ConstraintError(
      `security version ${report.securityVersion} is below REVOKE:${c.minSecurityVersion}`,
    );
  }
  if (c.snpTcbFloor.length) checkSnpTcb(report.snpTcb, c.snpTcbFloor);
  if (LEVELS[report.level] < LEVELS[c.minLevel]) {
    throw new ConstraintError(
      `security level ${report.level} is below SEC:${c.minLevel} (${report.levelReason})`,
    );
  }
  if (c.maxAgeMs !== null) {
    if (report.issuedAt === null) throw new ConstraintError("EXPIRE: given but the evidence carries no time");
    const age = now.getTime() - report.issuedAt.getTime();
    if (age > c.maxAgeMs) {
      throw new ConstraintError(`evidence is ${timedelta(age)} old, older than EXPIRE allows (${timedelta(c.maxAgeMs)})`);
    }
  }
  if (c.minTcbEvaluation !== null) checkTcbEvaluation(report, c.minTcbEvaluation);
  checkDcapCollateral(report, now, c.collateralGraceMs);
  if (c.ownerKeyIds.size && !c.ownerKeyIds.has(report.ownerKeyId)) {
    throw new ConstraintError(
      `owner key ${report.ownerKeyId.toUpperCase()} is not one of the accepted OWNER: values`,
    );
  }
}

/** GRACE: stale DCAP collateral is refused unless it expired no longer ago than the grace. */
export function checkDcapCollateral(report, now, graceMs) {
  const collateral = report.dcapCollateral;
  if (!collateral || now < collateral.nextUpdate) return;
  const expired = now.getTime() - collateral.nextUpdate.getTime();
  const since =
    `DCAP collateral expired ${formatDuration(expired)} ago (the ${collateral.nextUpdateOf}'s ` +
    `nextUpdate ${isoSeconds(collateral.nextUpdate)})`;
  if (graceMs === null) throw new ConstraintError(`${since}; without GRACE:<duration> no staleness is allowed`);
  if (expired > graceMs) throw new ConstraintError(`${since}, longer ago than GRACE:${formatDuration(graceMs)} allows`);
}

/** Milliseconds as the ISO-8601 duration EXPIRE: and GRACE: take: P1DT2H30M, PT0S. */
export function formatDuration(ms) {
  if (ms < 0) throw new RangeError(`negative duration ${ms}`);
  const days = Math.floor(ms / 86400000);
  let rest = ms - days * 86400000;
  const hours = Math.floor(rest / 3600000);
  rest -= hours * 3600000;
  const minutes = Math.floor(rest / 60000);
  rest -= minutes * 60000;
  const seconds = Math.floor(rest / 1000);
  const millis = Math.round(rest - seconds * 1000);
  const fraction = millis ? `.${String(millis).padStart(3, "0")}`.replace(/0+$/, "") : "";
  let time = (hours ? `${hours}H` : "") + (minutes ? `${minutes}M` : "");
  time += seconds || fraction ? `${seconds}${fraction}S` : "";
  const text = "P" + (days ? `${days}D` : "") + (time ? `T${time}` : "");
  return text === "P" ? "PT0S" : text;
}

/** Milliseconds as Python prints a timedelta: "2 days, 3:04:05.006000". */
function timedelta(ms) {
  const days = Math.floor(ms / 86400000);
  const rest = ms - days * 86400000;
  const [h, m, s] = [rest / 3600000, (rest / 60000) % 60, (rest / 1000) % 60].map(Math.floor);
  const fraction = rest % 1000 ? `.${String(Math.round(rest % 1000) * 1000).padStart(6, "0")}` : "";
  const clock = `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}${fraction}`;
  return days ? `${days} day${days === 1 ? "" : "s"}, ${clock}` : clock;
}

export function isoSeconds(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function checkTcbEvaluation(report, floor) {
  const collateral = report.dcapCollateral;
  if (!collateral) {
    throw new ConstraintError(
      `TCBEVAL: given but the evidence (${report.tee}) is not a DCAP quote verified with collateral`,
    );
  }
  for (const [which, number] of [
    ["TCB info", collateral.tcbInfoEvaluationDataNumber],
    ["QE identity", collateral.qeIdentityEvaluationDataNumber],
  ]) {
    if (number < floor) {
      throw new ConstraintError(
        `the ${which}'s TCB evaluation data number ${number} is below the floor ${floor} (TCBEVAL:${floor})`,
      );
    }
  }
}

function snpTcbFloor(value) {
  if (!SNP_TCB_FLOOR.test(value)) {
    throw new UsageError(`SNPTCB: takes name=n pairs joined by commas, e.g. snp=8,ucode=115, got ${pyRepr(value)}`);
  }
  const floor = new Map();
  for (const pair of value.split(",")) {
    const [name, number] = pair.split("=");
    if (!(name in SNP_TCB_COMPONENTS)) {
      throw new UsageError(
        `SNPTCB: unknown component ${pyRepr(name)} (known: ${Object.keys(SNP_TCB_COMPONENTS).join(", ")})`,
      );
    }
    if (floor.has(name)) throw new UsageError(`SNPTCB: names ${name} more than once`);
    if (Number(number) > 0xff) throw new UsageError(`SNPTCB: ${name} takes 0 to 255, got ${number}`);
    floor.set(name, Number(number));
  }
  return [...floor];
}

function checkSnpTcb(tcb, floor) {
  if (!tcb) throw new ConstraintError("SNPTCB: given but the evidence is not an SEV-SNP report");
  for (const [name, minimum] of floor) {
    const [field, label] = SNP_TCB_COMPONENTS[name];
    const reported = tcb[field];
    if (reported === null || reported === undefined) {
      throw new ConstraintError(`SNPTCB:${name} given but this platform's TCB has no ${label} (Turin has)`);
    }
    if (reported < minimum) {
      throw new ConstraintError(`reported ${label} ${reported} is below the floor ${minimum} (SNPTCB:${name}=${minimum})`);
    }
  }
}

function uint(key, value, max, digits) {
  if (value === undefined) return null;
  if (!/^[0-9]+$/.test(value) || value.length > digits || Number(value) > max) {
    throw new UsageError(`${key}: takes an integer from 0 to ${max}, got ${pyRepr(value)}`);
  }
  return Number(value);
}

function duration(key, value) {
  const upper = value.toUpperCase();
  const m = DURATION.exec(upper);
  if (!m || upper === "P" || upper === "PT" || upper.endsWith("T")) {
    throw new UsageError(`${key}: takes an ISO-8601 duration such as PT1H or P1DT12H, got ${pyRepr(value)}`);
  }
  const [days, hours, minutes, seconds] = m.slice(1).map((part) => Number(part || 0));
  return ((days * 24 + hours) * 60 + minutes) * 60000 + Math.round(seconds * 1000);
}
