"""The enclave's own HTTP API (``protocol/api.py``), reached only through Oblivious HTTP.

Trusted code, pure logic: a binary-HTTP request in, a binary-HTTP response out. Answers are the
JSON of ``protocol/api.py``'s result types; refusals are RFC 9457 problem documents. Both travel
encrypted, so they may speak plainly to the client; nothing here is logged but versions, problem
types and public hashes.

A model upload (``PUT /v1/model``) is the one request that streams (chunked OHTTP, as clients send
it): :meth:`App.open_stream` opens a sink that checks the signed manifest at the head, then hashes and
seals the body as it streams in. Any other streamed request is gathered up to an image's size and
answered as if sent whole; an upload sent whole is refused.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

from enclave_infer.attestation.receipt import RECEIPT_HEADER
from enclave_infer.enclave.classifier import Classifier
from enclave_infer.enclave.gateway import StreamSink
from enclave_infer.enclave.models import LoadedModel, ModelError, ModelStore, Upload
from enclave_infer.enclave.receipts import Receipts
from enclave_infer.errors import ProtocolError, UsageError
from enclave_infer.protocol import bhttp, padding
from enclave_infer.protocol.api import (
    JSON_MEDIA_TYPE,
    Classification,
    Header,
    Prediction,
    Problem,
    Route,
    Runtime,
)
from enclave_infer.protocol.manifest import parse_sf_binary

__all__ = ["App"]

log = logging.getLogger("enclave_infer.enclave")

_ALLOWED = {Route.CLASSIFY: ("POST",), Route.MODEL: ("GET", "PUT")}
UPLOADS_STREAM = "a model upload (PUT /v1/model) must be sent chunked (message/ohttp-chunked-req)"


class App:
    """``receipts``: signs a receipt for a classification that asks (``receipt: ?1``). ``pad``:
    answers to a classification are padded to one length per model, ``top`` and runtime choice
    (:meth:`padded_length`)."""

    def __init__(
        self,
        store: ModelStore,
        classifier: Classifier,
        *,
        max_top_k: int,
        max_image_bytes: int,
        receipts: Receipts | None = None,
        pad: bool = False,
    ) -> None:
        self._store = store
        self._classifier = classifier
        self._max_top_k = max_top_k
        self._max_image_bytes = max_image_bytes
        self._receipts = receipts
        self._pad = pad
        self._bounds_of: LoadedModel | None = None
        self._bounds: dict[tuple[int, bool, int], int] = {}

    def open_stream(self, head: bhttp.Request) -> StreamSink:
        """Where the content of a streamed request goes: a model upload's, into the model store,
        checked and sealed as it arrives, once its manifest's signature has verified (else it is
        answered at once, and the enclave drops the stream); any other request's is gathered, up to
        the size of an image, and answered by :meth:`__call__`."""
        if head.method != "PUT" or _path(head) != Route.MODEL:
            return _Gathered(self, head, limit=self._max_image_bytes)
        manifest, signature = head.header(Header.MANIFEST), head.header(Header.MANIFEST_SIGNATURE)
        if manifest is None or signature is None:
            return _Answer(
                Problem.INVALID_MANIFEST.details(
                    "PUT /v1/model needs manifest and manifest-signature headers"
                ).response()
            )
        try:
            upload = self._store.begin(parse_sf_binary(manifest), parse_sf_binary(signature))
        except ModelError as exc:
            return _Answer(exc.details.response())
        except ProtocolError as exc:
            return _Answer(Problem.INVALID_MANIFEST.details(str(exc)).response())
        return _UploadSink(upload)

    def __call__(self, request: bhttp.Request) -> bhttp.Response:
        try:
            return self._route(request)
        except ModelError as exc:
            return exc.details.response()
        except ProtocolError as exc:
            return Problem.MALFORMED_REQUEST.details(str(exc)).response()
        except Exception as exc:  # a bug must not take the enclave down nor reach the host's log
            # Only the type is logged: messages of arbitrary exceptions may quote decrypted input.
            log.error("internal error in %s handler: %s", request.method, type(exc).__name__)
            return Problem.INTERNAL.details("internal enclave error").response()

    def _route(self, request: bhttp.Request) -> bhttp.Response:
        try:
            url = urlsplit(request.path)
        except ValueError:
            return Problem.MALFORMED_REQUEST.details("malformed request path").response()
        try:
            route = Route(url.path)
        except ValueError:
            return Problem.NOT_FOUND.details(f"no such resource {url.path[:100]}").response()
        if request.method not in _ALLOWED[route]:
            return Problem.METHOD_NOT_ALLOWED.details(
                f"{request.method} is not allowed on {route}"
            ).response()
        if route is Route.CLASSIFY:
            return self._classify(request, parse_qs(url.query, keep_blank_values=True))
        if request.method == "GET":
            loaded = self._store.current
            if loaded is None:
                return Problem.NO_MODEL.details("no model has been provisioned yet").response()
            return _json(200, loaded.info().to_json())
        # PUT: a model upload streams (chunked OHTTP); no client sends one whole
        return Problem.MALFORMED_REQUEST.details(UPLOADS_STREAM).response()

    def _top(self, query: dict[str, list[str]]) -> int | None:
        """``top`` from the query, or None if it is not an integer from 1 to max_top_k."""
        top_values = query.get("top", ["1"])
        top = top_values[0] if len(top_values) == 1 else ""
        # Leading zeros dropped before int(), which refuses more than 4300 digits (ValueError); a
        # number with more digits than max_top_k is out of range whatever they are.
        digits = top.lstrip("0")
        if not (
            top.isascii()
            and top.isdigit()
            and len(digits) <= len(str(self._max_top_k))
            and 1 <= int(digits or "0") <= self._max_top_k
        ):
            return None
        return int(digits)

    def _classify(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        top = self._top(query)
        if top is None:
            return Problem.INVALID_PARAMETER.details(
                f"top must be an integer from 1 to {self._max_top_k}"
            ).response()
        if not request.content:
            return Problem.INVALID_IMAGE.details("empty request body: send the image bytes").response()
        runtime_values = query.get("runtime", [Runtime.DEFAULT.value])
        try:
            if len(runtime_values) != 1:
                raise UsageError("give runtime once")
            runtime = Runtime.parse(runtime_values[0])
        except UsageError as exc:
            return Problem.INVALID_PARAMETER.details(str(exc)).response()
        pinned = request.header(Header.MODEL_PIN)
        result = self._classifier.classify(request.content, top, runtime, pinned=pinned)
        response = _json(200, result.to_json())
        if self._receipts is not None and request.header(RECEIPT_HEADER) == "?1":
            receipt = self._receipts.header(
                request, response.content, result.model_sha256, result.model_version
            )
            response = bhttp.Response(
                status=200, headers=(*response.headers, receipt), content=response.content
            )
        return response

    # -- padding -------------------------------------------------------------------------------

    def padded_length(self, request: bhttp.Request, length: int) -> int | None:
        """The length the encoded answer (``length`` bytes) to ``request`` is padded to: for a
        classification, the longest answer the served model could give for its ``top``, runtime
        choice and receipt, so that every answer of this kind has one length; None: no padding."""
        if not self._pad or request.method != "POST" or _path(request) != Route.CLASSIFY:
            return None
        loaded = self._store.current
        if loaded is None:
            bound = 0
        else:
            query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
            top = self._top(query) or 1  # an invalid top is answered with a (short) refusal
            both = query.get("runtime", [""]) == [Runtime.BOTH.value]
            wants_receipt = self._receipts is not None and request.header(RECEIPT_HEADER) == "?1"
            bound = self._bound(loaded, top, both, wants_receipt)
        if length > bound:  # an answer longer than any classification (not expected): whole blocks
            return -(-length // padding.RESPONSE_BLOCK) * padding.RESPONSE_BLOCK
        return bound

    def _bound(self, loaded: LoadedModel, top: int, both: bool, wants_receipt: bool) -> int:
        # a receipt's length depends on this instance's evidence (and collateral), nothing else: a
        # binary HTTP message's length depends only on its fields' lengths
        m = loaded.manifest
        receipt = (
            self._receipts.header_length(m.model_sha256, m.version) if wants_receipt and self._receipts else 0
        )
        key = (top, both, receipt)
        if self._bounds_of is not loaded:  # a new model: new bounds
            self._bounds_of, self._bounds = loaded, {}
        if key not in self._bounds:
            worst = self._worst_answer(loaded, top, both)
            if receipt:
                worst = _with_header(worst, (RECEIPT_HEADER, "x" * receipt))
            # at least MIN_CLASSIFY_RESPONSE, whole blocks: a refusal (a bad image, a date, a pinned
            # model) must not stand out from an answer by its length
            longest = max(len(bhttp.encode_response(worst)), MIN_CLASSIFY_RESPONSE)
            self._bounds[key] = -(-longest // padding.RESPONSE_BLOCK) * padding.RESPONSE_BLOCK
        return self._bounds[key]

    @staticmethod
    def _worst_answer(loaded: LoadedModel, top: int, both: bool) -> bhttp.Response:
        """The longest answer ``loaded`` can give: its longest label (as JSON escapes it), its
        largest index and the longest probability, ``top`` times (for each runtime with ``both``)."""
        labels, m = loaded.manifest.labels, loaded.manifest
        longest = max(labels, key=lambda label: len(json.dumps(label)))
        worst = tuple(
            Prediction(longest, len(labels) - 1, _LONGEST_PROBABILITY) for _ in range(min(top, len(labels)))
        )
        answer = Classification(
            m.model_sha256, m.version, worst, {name: worst for name in loaded.runtimes} if both else {}
        )
        return _json(200, answer.to_json())


def _with_header(response: bhttp.Response, header: tuple[str, str]) -> bhttp.Response:
    return bhttp.Response(
        status=response.status, headers=(*response.headers, header), content=response.content
    )


# Every refusal the classification route gives (problem documents: invalid image, date, model pin,
# too large, runtime, overloaded, internal) encodes in less than this; answers are padded to at least it.
MIN_CLASSIFY_RESPONSE = 512
# The longest repr of a float in [0, 1] (23 characters): every probability prints in at most this.
_LONGEST_PROBABILITY = 2.2250738585072014e-308


def _path(request: bhttp.Request) -> str:
    try:
        return urlsplit(request.path).path
    except ValueError:
        return ""


class _Answer:
    """A stream decided at its head: the answer is known, the content is not wanted."""

    def __init__(self, response: bhttp.Response) -> None:
        self._response = response

    def write(self, piece: bytes) -> bhttp.Response | None:
        return self._response

    def finish(self) -> bhttp.Response:
        return self._response

    def abort(self) -> None:
        pass


class _UploadSink:
    def __init__(self, upload: Upload) -> None:
        self._upload = upload

    def write(self, piece: bytes) -> bhttp.Response | None:
        try:
            self._upload.write(piece)
        except ModelError as exc:
            self._refused(exc)
            return exc.details.response()
        return None

    def finish(self) -> bhttp.Response:
        try:
            return _json(201, self._upload.finish().to_json())
        except ModelError as exc:
            self._refused(exc)
            return exc.details.response()
        finally:
            self._upload.abort()  # a no-op once finished

    def abort(self) -> None:
        self._upload.abort()

    def _refused(self, exc: ModelError) -> None:
        # The problem type only: details may quote the model (a runtime's load error names its
        # operators). Storage failures are the enclave's own words, and the operator must read them.
        version, reason = self._upload.manifest.version, exc.problem.slug
        if exc.problem in (Problem.STORAGE_FULL, Problem.STORAGE_FAILED):
            reason = f"{reason} ({exc.details.detail})"
        log.warning("provision of model version %d refused: %s", version, reason)
        self._upload.abort(logged=True)


class _Gathered:
    def __init__(self, app: App, head: bhttp.Request, *, limit: int) -> None:
        self._app, self._head, self._limit = app, head, limit
        self._content = bytearray()

    def write(self, piece: bytes) -> bhttp.Response | None:
        self._content += piece
        if len(self._content) > self._limit:
            return Problem.TOO_LARGE.details(f"request body larger than {self._limit} bytes").response()
        return None

    def finish(self) -> bhttp.Response:
        h = self._head
        return self._app(
            bhttp.Request(h.method, h.scheme, h.authority, h.path, h.headers, bytes(self._content))
        )

    def abort(self) -> None:
        self._content.clear()


def _json(status: int, doc: object) -> bhttp.Response:
    return bhttp.Response(
        status=status, headers=(("content-type", JSON_MEDIA_TYPE),), content=json.dumps(doc).encode()
    )
