// One image, as client/sdk.py's Client.attest() and classify() send it: fetch the key configuration
// and fresh evidence, verify both against the constraint, and only then encrypt the image to the
// attested key (Oblivious HTTP, binary HTTP inside) and open the answer.

import { verify } from "./attestation.js";
import { decodeResponse, encodeRequest, header, pad } from "./bhttp.js";
import { toHex } from "./bytes.js";
import {
  MEDIA_TYPE_KEYS,
  MEDIA_TYPE_REQUEST,
  MEDIA_TYPE_RESPONSE,
  decodeKeyConfigs,
  encapsulateRequest,
  encodeKeyConfig,
  supports,
} from "./ohttp.js";

export const TOP = 5;
const INNER_SCHEME = "https";
const INNER_AUTHORITY = "enclave";
const CLASSIFY_PATH = `/v1/classify?top=${TOP}&runtime=default`;
const DATE_PROBLEM = "https://iana.org/assignments/http-problem-types#date";
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

/** A refusal or failure, told in one sentence; ``stage`` says how far the image got. */
export class ClientError extends Error {
  constructor(message, stage) {
    super(message);
    this.stage = stage;
  }
}

const options = { credentials: "omit", cache: "no-store", redirect: "error", referrerPolicy: "no-referrer" };

async function send(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { ...options, ...init });
  } catch {
    throw new ClientError(
      `cannot reach ${new URL(url).origin}: it is down, or it does not allow this page's origin (CORS)`,
      "network",
    );
  }
  const body = new Uint8Array(await response.arrayBuffer());
  if (body.length > MAX_ANSWER_BYTES) throw new ClientError("the host's answer is too large", "network");
  return { status: response.status, type: mediaType(response.headers.get("content-type")), body };
}

function mediaType(value) {
  return (value || "").split(";")[0].trim().toLowerCase();
}

function problemText(body, status) {
  try {
    const doc = JSON.parse(new TextDecoder().decode(body));
    return { type: doc.type, text: String(doc.detail || doc.title || doc.type || `status ${status}`).slice(0, 300) };
  } catch {
    return { type: null, text: `answered ${status} without a problem document` };
  }
}

async function get(url, expect) {
  const reply = await send(url);
  if (reply.status !== 200) throw new ClientError(`the host refused: ${problemText(reply.body, reply.status).text}`, "attest");
  if (reply.type !== expect) throw new ClientError(`${url.split("?")[0]} did not answer with ${expect}`, "attest");
  return reply.body;
}

/** Fetch keys and evidence; verify them. Throws ClientError (stage "attest") or the attestation's error. */
export async function attest(serviceUrl, constraint, now = () => new Date()) {
  const base = serviceUrl.replace(/\/+$/, "");
  const keys = await get(`${base}/ohttp-keys`, MEDIA_TYPE_KEYS);
  let configs;
  try {
    configs = decodeKeyConfigs(keys);
  } catch (exc) {
    throw new ClientError(`the host served an invalid key configuration: ${exc.message}`, "attest");
  }
  const config = configs.find(supports);
  if (!config) throw new ClientError("the enclave offers no supported HPKE suite", "attest");
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const document = await get(`${base}/v1/attestation?nonce=${toHex(nonce)}`, "application/json");
  const attestation = await verify(document, { keyConfig: encodeKeyConfig(config), nonce, constraint, now: now() });
  return { ...attestation, ohttpConfig: config, base };
}

/** Classify ``image`` (bytes) with an attested enclave: {model: {sha256, version}, results: [...]}. */
export async function classify(attested, image) {
  let clockOffset = 0;
  for (let attempt = 1; attempt <= 2; attempt++) {
    let inner = encodeRequest({
      method: "POST",
      scheme: INNER_SCHEME,
      authority: INNER_AUTHORITY,
      path: CLASSIFY_PATH,
      headers: [
        ["content-type", "application/octet-stream"],
        ["date", new Date(Date.now() + clockOffset).toUTCString()],
      ],
      content: image,
    });
    if (attested.config.padding) inner = pad(inner);
    const { encapsulated, context } = await encapsulateRequest(attested.ohttpConfig, inner);
    const reply = await send(`${attested.base}/v1/ohttp`, {
      method: "POST",
      headers: { "content-type": MEDIA_TYPE_REQUEST },
      body: encapsulated,
    });
    if (reply.status !== 200) throw new ClientError(`the host refused: ${problemText(reply.body, reply.status).text}`, "send");
    if (reply.type !== MEDIA_TYPE_RESPONSE) throw new ClientError(`the host's answer is not ${MEDIA_TYPE_RESPONSE}`, "send");
    const response = decodeResponse(await context.decapsulateResponse(reply.body));
    if (response.status >= 400) {
      const problem = problemText(response.content, response.status);
      const serverDate = Date.parse(header(response, "date") ?? "");
      if (attempt === 1 && problem.type === DATE_PROBLEM && !Number.isNaN(serverDate)) {
        clockOffset = serverDate - Date.now(); // RFC 9458 §6.5.2: correct the clock, retry once
        continue;
      }
      throw new ClientError(`the enclave refused: ${problem.text}`, "send");
    }
    if (mediaType(header(response, "content-type")) !== "application/json") {
      throw new ClientError(`the enclave answered ${response.status} without a JSON document`, "send");
    }
    return classification(JSON.parse(new TextDecoder().decode(response.content)));
  }
  throw new ClientError("the enclave refused the request's date twice", "send");
}

function classification(doc) {
  const model = doc?.model;
  if (typeof model?.sha256 !== "string" || !Number.isInteger(model?.version) || !Array.isArray(doc.results)) {
    throw new ClientError("the enclave's answer is not a classification", "send");
  }
  const results = doc.results.map((p) => {
    if (typeof p?.label !== "string" || typeof p?.probability !== "number") {
      throw new ClientError("the enclave's answer is not a classification", "send");
    }
    return { label: p.label, index: p.index, probability: p.probability };
  });
  return { model: { sha256: model.sha256, version: model.version }, results };
}
