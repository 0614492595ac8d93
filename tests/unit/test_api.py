"""The inner API's wire objects: one definition, built by the enclave and parsed by the SDK."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from enclave_infer import (
    Classification,
    Client,
    ClientConfig,
    EnclaveFailureError,
    InvalidRequestError,
    ModelInfo,
    OverloadedError,
    Prediction,
    Preprocessing,
    Problem,
    ProvisionResult,
    RemoteError,
    Runtime,
    TooLargeError,
    UnavailableError,
    UsageError,
)
from enclave_infer.client import _sdk as sdk
from enclave_infer.client._transport import Reply
from enclave_infer.errors import ProtocolError
from enclave_infer.protocol.api import ProblemDetails
from enclave_infer.protocol.manifest import ModelFile

INFO = ModelInfo(
    sha256="ab" * 32,
    version=3,
    files=(ModelFile("onnx", "cd" * 32, 1234), ModelFile("torchscript", "ef" * 32, 99)),
    runtimes=("onnx", "torch"),
    labels=1000,
    preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), layout="NHWC"),
    provisioned_at=datetime(2026, 11, 29, 6, 0, tzinfo=UTC),
)


def test_results_round_trip_through_json() -> None:
    both = {"onnx": (Prediction("cat", 1, 0.75),), "torch": (Prediction("cat", 1, 0.7500001),)}
    answer = Classification("ab" * 32, 3, (Prediction("cat", 1, 0.75),), both)
    assert Classification.from_json(json.loads(json.dumps(answer.to_json()))) == answer
    assert ModelInfo.from_json(json.loads(json.dumps(INFO.to_json()))) == INFO
    assert INFO.size == 1333 and INFO.formats == ("onnx", "torchscript")
    result = ProvisionResult(INFO, replaced_version=2)
    assert ProvisionResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert str(answer.results[0]) == "cat (75.0%)"


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"model": {"sha256": "x", "version": "3"}, "results": []},
        {"model": {"sha256": "x", "version": 3}, "results": [{"label": "a", "index": 0}]},
        {"model": {"sha256": "x", "version": 3}, "results": [{"label": "a", "index": 0, "probability": "1"}]},
        {"model": {"sha256": "x", "version": 3}, "results": {}, "runtimes": []},
    ],
)
def test_malformed_classifications_are_protocol_errors(doc: object) -> None:
    with pytest.raises(ProtocolError):
        Classification.from_json(doc)


def test_malformed_model_info_is_a_protocol_error() -> None:
    doc = INFO.to_json()
    for key, bad in (
        ("provisioned_at", "yesterday"),
        ("files", [{"format": "pickle"}]),
        ("preprocessing", {}),
    ):
        with pytest.raises(ProtocolError):
            ModelInfo.from_json({**doc, key: bad} if key != "preprocessing" else {**doc, key: {"crop": 0}})


def test_runtime_parses_the_wire_names_only() -> None:
    assert Runtime.parse("both") is Runtime.BOTH and f"{Runtime.ONNX}" == "onnx"
    with pytest.raises(UsageError, match="runtime must be one of default, onnx, torch, both"):
        Runtime.parse("tensorflow")


def test_problem_documents_are_rfc_9457() -> None:
    problem = Problem.DATE.details("request date outside the window")
    doc = json.loads(problem.encode())
    assert doc == {
        "type": "https://iana.org/assignments/http-problem-types#date",
        "status": 400,
        "title": "Date not acceptable",
        "detail": "request date outside the window",
    }
    parsed = ProblemDetails.decode(problem.encode(), status=400)
    assert parsed == problem and parsed.problem is Problem.DATE
    # a peer's document: its type may be unknown, its text is shortened and made printable
    odd = ProblemDetails.decode(b'{"title": "x\\u001b[31m", "detail": "' + b"y" * 900 + b'"}', status=418)
    assert (
        odd.type == "about:blank" and odd.problem is None and odd.title == "x[31m" and len(odd.detail) == 500
    )
    with pytest.raises(ProtocolError):
        ProblemDetails.decode(b"[]", status=400)
    with pytest.raises(ProtocolError):
        ProblemDetails.decode(b"{}")  # no status from the HTTP layer, none in the document


def test_every_problem_has_a_stable_unique_uri_and_an_error_status() -> None:
    uris = [p.uri for p in Problem]
    assert len(set(uris)) == len(uris)
    assert all(400 <= p.status <= 599 for p in Problem)
    assert all(
        u.startswith(("https://iana.org/assignments/http-problem-types#", "urn:enclave-infer:problem:"))
        for u in uris
    )


def test_a_problems_short_name_is_its_uris_last_segment() -> None:
    assert Problem.OVERLOADED.slug == "overloaded" and Problem.OHTTP_KEY.slug == "ohttp-key"
    assert len({p.slug for p in Problem}) == len(Problem)


@pytest.mark.parametrize(
    ("problem", "error"),
    [
        (Problem.OVERLOADED, OverloadedError),
        (Problem.ENCLAVE_UNAVAILABLE, UnavailableError),
        (Problem.TOO_LARGE, TooLargeError),
        (Problem.MALFORMED_REQUEST, InvalidRequestError),
        (Problem.INTERNAL, EnclaveFailureError),
    ],
)
def test_the_sdk_maps_a_problem_type_to_its_exception(problem: Problem, error: type[RemoteError]) -> None:
    reply = Reply(problem.status, "application/problem+json", problem.details("because").encode(), 7.0)
    exc = sdk._host_error(reply)
    assert type(exc) is error and exc.status == problem.status and exc.problem == problem.uri
    assert str(exc) == "because"
    if isinstance(exc, OverloadedError):
        assert exc.retry_after == 7.0


def test_an_unknown_problem_type_is_a_plain_remote_error() -> None:
    body = json.dumps({"type": "https://example.org/other", "detail": "nope"}).encode()
    exc = sdk._host_error(Reply(409, "application/problem+json", body))
    assert type(exc) is RemoteError and exc.problem == "https://example.org/other" and str(exc) == "nope"
    exc = sdk._host_error(Reply(502, "text/html", b"<html>"))
    assert type(exc) is RemoteError and "502" in str(exc)


def test_a_client_that_cannot_be_built_opens_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []
    real = httpx.Client

    def counting(*args: object, **kwargs: object) -> httpx.Client:
        client = real(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        return client

    monkeypatch.setattr(httpx, "Client", counting)
    for args, kwargs in (
        (("ftp://host", "C:" + "00" * 32), {}),
        (("http://host", "C:00"), {}),
        (("http://host", "C:" + "00" * 32), {"model_sha256": "xyz"}),
    ):
        with pytest.raises(UsageError):
            Client(*args, **kwargs)  # type: ignore[arg-type]
    assert opened == []


def test_client_limits_are_one_validated_config() -> None:
    assert ClientConfig().max_response_bytes == 1024 * 1024
    with pytest.raises(UsageError, match=r"ClientConfig\.timeout must be a positive number"):
        ClientConfig(timeout=0)
