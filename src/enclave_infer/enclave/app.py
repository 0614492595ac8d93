"""The enclave's own HTTP API, reached only through Oblivious HTTP.

Trusted code, pure logic: a binary-HTTP request in, a binary-HTTP response out.

=======================  ==================================================================
``POST /v1/classify``    body: image bytes; query ``top=K``, ``runtime=onnx|torch|both`` → JSON
                         model + results (with ``both``, also each runtime's results)
``PUT /v1/model``        owner-signed manifest (headers) and model (body) → JSON metadata
``GET /v1/model``        public metadata of the served model (404 if none)
=======================  ==================================================================

Errors are JSON ``{"error": "one line"}`` with a 4xx/5xx status; they travel encrypted like
everything else, so they may speak plainly to the client.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from enclave_infer.enclave.gateway import StreamSink
from enclave_infer.enclave.models import ModelError, ModelStore, Upload
from enclave_infer.errors import ProtocolError
from enclave_infer.protocol import bhttp
from enclave_infer.protocol.manifest import parse_sf_binary

__all__ = ["App"]

log = logging.getLogger("enclave_infer.enclave")


class App:
    def __init__(
        self, store: ModelStore, *, max_top_k: int, max_model_bytes: int, max_image_bytes: int
    ) -> None:
        self._store = store
        self._max_top_k = max_top_k
        self._max_model_bytes = max_model_bytes
        self._max_image_bytes = max_image_bytes

    def open_stream(self, head: bhttp.Request) -> StreamSink:
        """Where the content of a streamed (chunked) request goes. ``PUT /v1/model`` streams into
        the model store, checked and sealed as it arrives; any other request is gathered, up to
        the size of an image, and answered as usual."""
        if head.method == "PUT" and head.path == "/v1/model":
            manifest, signature = head.header("manifest"), head.header("manifest-signature")
            if manifest is None or signature is None:
                return _Answer(
                    _json(400, {"error": "PUT /v1/model needs manifest and manifest-signature headers"})
                )
            try:
                upload = self._store.begin(parse_sf_binary(manifest), parse_sf_binary(signature))
            except ModelError as exc:
                return _Answer(_json(exc.status, {"error": str(exc)}))
            except ProtocolError as exc:
                return _Answer(_json(400, {"error": str(exc)}))
            return _UploadSink(upload)
        return _Gathered(self, head, limit=self._max_image_bytes)

    def __call__(self, request: bhttp.Request) -> bhttp.Response:
        try:
            return self._route(request)
        except ModelError as exc:
            return _json(exc.status, {"error": str(exc)})
        except ProtocolError as exc:
            return _json(400, {"error": str(exc)})
        except Exception as exc:  # a bug must not take the enclave down nor reach the host's log
            # Only the type is logged: messages of arbitrary exceptions may quote decrypted input.
            log.error("internal error in %s handler: %s", request.method, type(exc).__name__)
            return _json(500, {"error": "internal enclave error"})

    def _route(self, request: bhttp.Request) -> bhttp.Response:
        try:
            url = urlsplit(request.path)
        except ValueError:
            return _json(400, {"error": "malformed request path"})
        routes = {
            "/v1/classify": {"POST": self._classify},
            "/v1/model": {"GET": self._get_model, "PUT": self._put_model},
        }
        handlers = routes.get(url.path)
        if handlers is None:
            return _json(404, {"error": f"no such resource {url.path}"})
        handler = handlers.get(request.method)
        if handler is None:
            return _json(405, {"error": f"{request.method} is not allowed on {url.path}"})
        query = parse_qs(url.query, keep_blank_values=True)
        return handler(request, query)

    def _classify(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        top_values = query.get("top", ["1"])
        top = top_values[0] if len(top_values) == 1 else ""
        if not (top.isascii() and top.isdigit() and 1 <= int(top) <= self._max_top_k):
            return _json(400, {"error": f"top must be an integer from 1 to {self._max_top_k}"})
        if not request.content:
            return _json(400, {"error": "empty request body: send the image bytes"})
        runtime = query.get("runtime", ["default"])
        if len(runtime) != 1 or runtime[0] not in ("default", "onnx", "torch", "both"):
            return _json(400, {"error": "runtime must be onnx, torch or both"})
        pinned = request.header("model-sha256")
        return _json(200, self._store.classify(request.content, int(top), runtime[0], pinned=pinned))

    def _get_model(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        loaded = self._store.current
        if loaded is None:
            return _json(404, {"error": "no model has been provisioned yet"})
        return _json(200, loaded.metadata())

    def _put_model(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        manifest, signature = request.header("manifest"), request.header("manifest-signature")
        if manifest is None or signature is None:
            return _json(400, {"error": "PUT /v1/model needs manifest and manifest-signature headers"})
        if len(request.content) > self._max_model_bytes:
            return _json(413, {"error": f"model is larger than {self._max_model_bytes} bytes"})
        loaded = self._store.provision(parse_sf_binary(manifest), parse_sf_binary(signature), request.content)
        return _json(201, loaded.metadata())


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
            return _json(exc.status, {"error": str(exc)})
        return None

    def finish(self) -> bhttp.Response:
        try:
            return _json(201, self._upload.finish().metadata())
        except ModelError as exc:
            return _json(exc.status, {"error": str(exc)})
        finally:
            self._upload.abort()

    def abort(self) -> None:
        self._upload.abort()


class _Gathered:
    def __init__(self, app: App, head: bhttp.Request, *, limit: int) -> None:
        self._app, self._head, self._limit = app, head, limit
        self._content = bytearray()

    def write(self, piece: bytes) -> bhttp.Response | None:
        self._content += piece
        if len(self._content) > self._limit:
            return _json(413, {"error": f"request body larger than {self._limit} bytes"})
        return None

    def finish(self) -> bhttp.Response:
        h = self._head
        return self._app(
            bhttp.Request(h.method, h.scheme, h.authority, h.path, h.headers, bytes(self._content))
        )

    def abort(self) -> None:
        self._content.clear()


def _json(status: int, doc: dict[str, Any]) -> bhttp.Response:
    return bhttp.Response(
        status=status,
        headers=(("content-type", "application/json"),),
        content=json.dumps(doc).encode(),
    )
