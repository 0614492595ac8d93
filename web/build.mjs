// Builds the one self-contained page: web/src bundled by esbuild (with @hpke and dcap-qvl-web's
// WebAssembly, base64) into one inline script, web/src/page.css inline, and a Content-Security-Policy
// that allows exactly those two by hash. Output: src/enclave_infer/data/web/enclave-infer.html.
//
//   npm ci --ignore-scripts && node build.mjs          (or: make web)
//
// The output depends on nothing but the inputs (no dates, no paths), so a rebuild from the same
// sources and lock file gives the same bytes. The page carries the SHA-256 of its sources (see
// sourcesDigest), which tests/browser/test_page_build.py recomputes in Python.

import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const WEB = dirname(fileURLToPath(import.meta.url));
const OUT = join(WEB, "..", "src", "enclave_infer", "data", "web", "enclave-infer.html");
const SOURCES = ["build.mjs", "package.json", "package-lock.json", ...readdirSync(join(WEB, "src")).map((n) => `src/${n}`)];

const sha256 = (data) => createHash("sha256").update(data);

/** SHA-256 over "path\nsha256(content)\n" for each source file, sorted by path. */
function sourcesDigest() {
  const digest = sha256("");
  for (const name of [...SOURCES].sort()) {
    digest.update(`${name}\n${sha256(readFileSync(join(WEB, name))).digest("hex")}\n`);
  }
  return digest.digest("hex");
}

const built = await esbuild.build({
  entryPoints: [join(WEB, "src", "main.js")],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["chrome100", "firefox115", "safari16"],
  loader: { ".wasm": "binary" },
  write: false,
  minify: false,
  legalComments: "eof",
  charset: "ascii",
  // dcap-qvl-web's default loader resolves its .wasm from import.meta.url; the page hands it the
  // inlined bytes instead, so that path never runs.
  logOverride: { "empty-import-meta": "silent" },
  logLevel: "warning",
});
let script = built.outputFiles[0].text.replaceAll("</script", "<\\/script");
if (/<!--|<\/script/i.test(script)) throw new Error("the bundle holds text that would end the inline script");
const style = readFileSync(join(WEB, "src", "page.css"), "utf8");
if (/<\/style/i.test(style)) throw new Error("page.css holds text that would end the inline style");

const hash = (text) => `'sha256-${sha256(text).digest("base64")}'`;
const csp = [
  "default-src 'none'",
  `script-src ${hash(script)} 'wasm-unsafe-eval'`,
  `style-src ${hash(style)}`,
  "img-src blob: data:",
  "connect-src http: https:",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");

const fill = { CSP: csp, SOURCES: `sha256:${sourcesDigest()}`, STYLE: style, SCRIPT: script };
const page = readFileSync(join(WEB, "src", "page.html"), "utf8").replace(/\{\{(\w+)\}\}/g, (_, key) => fill[key]);
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, page);
console.log(`${sha256(page).digest("hex")}  ${OUT.slice(join(WEB, "..").length + 1)} (${page.length} bytes)`);
