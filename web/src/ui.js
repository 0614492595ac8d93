// The page: settings from the URL fragment (#constraint=...&url=..., which never reaches a server),
// images dropped or picked, and one card per image with its verdict and answer. All text that comes
// from the network is set as text, never as markup.

import { ClientError, TOP, attest, classify } from "./client.js";
import { parse } from "./constraints.js";

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function readFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { url: params.get("url"), constraint: params.get("constraint") };
}

function writeFragment() {
  const params = new URLSearchParams();
  if ($("constraint").value.trim()) params.set("constraint", $("constraint").value.trim());
  if ($("url").value.trim() && $("url").value.trim() !== servedFrom()) params.set("url", $("url").value.trim());
  history.replaceState(null, "", `#${params}`);
}

/** The page's own origin when a server (the service's host, most likely) served it. */
function servedFrom() {
  return location.protocol === "http:" || location.protocol === "https:" ? location.origin : "";
}

/** The constraint, parsed, or null with the reason shown under the field. */
function constraint() {
  const status = $("constraint-status");
  try {
    const parsed = parse($("constraint").value);
    status.textContent = "";
    status.className = "status";
    return parsed;
  } catch (exc) {
    status.textContent = $("constraint").value.trim() ? exc.message : "Give the constraint the enclave must meet.";
    status.className = "status error";
    return null;
  }
}

function serviceUrl() {
  const value = $("url").value.trim();
  return /^https?:\/\/[^/]/.test(value) ? value : null;
}

function card(file) {
  const article = el("article", "card");
  article.dataset.state = "attesting";
  const head = el("header");
  const thumb = el("img", "thumb");
  thumb.alt = "";
  thumb.src = URL.createObjectURL(file);
  head.append(thumb, el("h2", "name", file.name), el("span", "state", "verifying the enclave…"));
  article.append(head);
  $("results").prepend(article);
  return article;
}

function setState(article, state, text) {
  article.dataset.state = state;
  article.querySelector(".state").textContent = text;
}

function mode(report) {
  return report.tee === "simulation" ? "SIMULATION" : report.debug ? "DEBUG" : "RELEASE";
}

function verdict(attested) {
  const { report, verdict: dcap } = attested;
  const rows = [
    ["Attestation", `${mode(report)} (${report.tee}), constraint met`],
    ["Code hash", report.codeHash.toUpperCase()],
    ["Security level", `${report.level}: ${report.levelReason}`],
    ["Owner key (OWNER:)", report.ownerKeyId.toUpperCase()],
  ];
  if (dcap) rows.push(["TCB status", dcap.tcbStatus + (dcap.advisoryIds.length ? ` (${dcap.advisoryIds.join(", ")})` : "")]);
  rows.push(["Padding", attested.config.padding ? "on (Padmé)" : "off"]);
  const list = el("dl", "verdict");
  for (const [term, value] of rows) list.append(el("dt", "", term), el("dd", "", value));
  list.querySelector("dd:nth-of-type(3)").classList.add("level", report.level.toLowerCase());
  return list;
}

function insecureBanner(report) {
  return el("div", "banner insecure", `The enclave is INSECURE: ${report.levelReason}. Do not send it anything confidential.`);
}

function predictions(result) {
  const list = el("ol", "predictions");
  for (const p of result.results) {
    const item = el("li");
    const bar = el("span", "bar");
    const fill = el("span", "fill");
    fill.style.width = `${Math.max(0, Math.min(100, p.probability * 100)).toFixed(1)}%`;
    bar.append(fill);
    item.append(el("span", "label", p.label), bar, el("span", "pct", `${(p.probability * 100).toFixed(1)}%`));
    list.append(item);
  }
  const model = el("p", "model", `Model SHA-256 ${result.model.sha256}, version ${result.model.version}`);
  return [list, model];
}

async function handle(file, settings) {
  const article = card(file);
  let attested;
  try {
    attested = await attest(settings.url, settings.constraint);
  } catch (exc) {
    // nothing of the image has left the browser: say why in one sentence
    setState(article, "refused", "refused: nothing was sent");
    const why = exc instanceof ClientError ? "Nothing was sent" : "The enclave was refused";
    article.append(el("p", "refusal", `${why}: ${exc.message}.`.replace(/\.\.$/, ".")));
    return;
  }
  if (attested.report.level === "INSECURE") article.append(insecureBanner(attested.report));
  article.append(verdict(attested));
  setState(article, "sending", "encrypted to the attested key; classifying…");
  try {
    const result = await classify(attested, new Uint8Array(await file.arrayBuffer()));
    setState(article, "done", "classified in the enclave");
    article.append(...predictions(result));
  } catch (exc) {
    setState(article, "failed", "failed");
    article.append(el("p", "refusal", `${exc.message}.`.replace(/\.\.$/, ".")));
  }
}

async function take(files) {
  const settings = { url: serviceUrl(), constraint: constraint() };
  if (!settings.url) {
    $("url-status").textContent = "Give the service's URL (http:// or https://).";
    return;
  }
  $("url-status").textContent = "";
  if (!settings.constraint) return;
  writeFragment();
  for (const file of files) await handle(file, settings);
}

function fromFragment() {
  const fragment = readFragment();
  $("url").value = fragment.url ?? servedFrom();
  $("constraint").value = fragment.constraint ?? "";
  if ($("constraint").value) constraint();
}

export function start() {
  fromFragment();
  window.addEventListener("hashchange", fromFragment);
  $("top").textContent = String(TOP);
  $("constraint").addEventListener("input", () => constraint() && writeFragment());
  $("url").addEventListener("change", writeFragment);
  if (!window.isSecureContext || !crypto.subtle) {
    const warning = $("context-warning");
    warning.hidden = false;
    warning.textContent =
      "This page is not in a secure context, so the browser withholds the cryptography it needs: " +
      "open it over https://, from localhost, or as a local file (enclave-infer page --write FILE).";
    $("files").disabled = true;
    return;
  }
  $("files").addEventListener("change", (event) => {
    take([...event.target.files]);
    event.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    take([...event.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
  });
  $("sources").textContent = document.querySelector('meta[name="enclave-infer-sources"]').content;
  document.body.dataset.ready = "true";
}
