// The page's entry point (web/build.mjs bundles it, with everything it imports, into one inline script).

import { attestationBinding, decodeDocument, parseConfig, verify } from "./attestation.js";
import { decodeResponse, encodeRequest, pad, padmeLength } from "./bhttp.js";
import { check, formatDuration, parse } from "./constraints.js";
import { parseQuoteLayout, verifyQuote } from "./dcap.js";
import { decodeKeyConfigs, encapsulateRequest, encodeKeyConfig } from "./ohttp.js";
import { start } from "./ui.js";

// The modules, for tests/browser/ to check against the Python implementation in a real browser.
window.enclaveInferInternals = Object.freeze({
  attestationBinding,
  check,
  decodeDocument,
  decodeKeyConfigs,
  decodeResponse,
  encapsulateRequest,
  encodeKeyConfig,
  encodeRequest,
  formatDuration,
  pad,
  padmeLength,
  parse,
  parseConfig,
  parseQuoteLayout,
  verify,
  verifyQuote,
});

start();
