"""The enclave's own HTTP API, reached only through Oblivious HTTP.

Trusted code, pure logic: a binary-HTTP request in, a binary-HTTP response out.

=======================  ==================================================================
``POST /v1/classify``    body: image bytes; query ``top=K`` → JSON model + results
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

from enclave_infer.enclave.models import ModelError, ModelStore
from enclave_infer.errors import ProtocolError
from enclave_infer.protocol import bhttp
from enclave_infer.protocol.manifest import parse_sf_binary

__all__ = ["App"]

log = logging.getLogger("enclave_infer.enclave")


class App:
    def __init__(self, store: ModelStore, *, max_top_k: int) -> None:
        self._store = store
        self._max_top_k = max_top_k

    def __call__(self, request: bhttp.Request) -> bhttp.Response:
        try:
            return self._route(request)
        except ModelError as exc:
            return _json(exc.status, {"error": str(exc)})
        except ProtocolError as exc:
            return _json(400, {"error": str(exc)})

    def _route(self, request: bhttp.Request) -> bhttp.Response:
        url = urlsplit(request.path)
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
        if (
            len(top_values) != 1
            or not top_values[0].isdigit()
            or not 1 <= int(top_values[0]) <= self._max_top_k
        ):
            return _json(400, {"error": f"top must be an integer from 1 to {self._max_top_k}"})
        if not request.content:
            return _json(400, {"error": "empty request body: send the image bytes"})
        return _json(200, self._store.classify(request.content, int(top_values[0])))

    def _get_model(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        loaded = self._store.current
        if loaded is None:
            return _json(404, {"error": "no model has been provisioned yet"})
        return _json(200, loaded.metadata())

    def _put_model(self, request: bhttp.Request, query: dict[str, list[str]]) -> bhttp.Response:
        manifest, signature = request.header("manifest"), request.header("manifest-signature")
        if manifest is None or signature is None:
            return _json(400, {"error": "PUT /v1/model needs manifest and manifest-signature headers"})
        loaded = self._store.provision(parse_sf_binary(manifest), parse_sf_binary(signature), request.content)
        return _json(201, loaded.metadata())


def _json(status: int, doc: dict[str, Any]) -> bhttp.Response:
    return bhttp.Response(
        status=status,
        headers=(("content-type", "application/json"),),
        content=json.dumps(doc).encode(),
    )
