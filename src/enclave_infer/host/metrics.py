"""Prometheus metrics of the host, for operators: ``GET /metrics``.

Untrusted code, and nothing in it is secret: the host counts what it relays (ciphertext), times it,
and reads the enclave's public status (the served model's SHA-256 and version, which ``GET
/v1/model`` tells anyone, and counts of classifications and batch sizes). No label value is ever
derived from an image, a label or a model's content.

======================================================  =========================================
``enclave_infer_requests_total{route,code,problem}``    answers by route, HTTP status, problem type
``enclave_infer_request_duration_seconds{route}``       time to answer, histogram
``enclave_infer_requests_in_flight``                    requests at the enclave (not bodies still arriving)
``enclave_infer_requests_refused_overload_total``       requests refused at once with 503 (queue full)
``enclave_infer_enclave_restarts_total``                enclave processes restarted after a crash
``enclave_infer_enclave_up``                            1 while the enclave process answers
``enclave_infer_classifications_total``                 classifications the enclave answered
``enclave_infer_batch_size``                            the enclave's inference batches, histogram
``enclave_infer_model_info{sha256,version}``            the served model (absent before provisioning)
``enclave_infer_attestation_ready``                     1 while the host has evidence clients can verify
``enclave_infer_collateral_expiry_timestamp_seconds``   when the served collateral expires
======================================================  =========================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from enclave_infer.protocol.api import EnclaveStatus

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a classification takes milliseconds, a model upload up to minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The host's metrics, in a registry of their own (never the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "enclave_infer_requests",
            "Answers by route, HTTP status and problem type",
            ("route", "code", "problem"),
            registry=r,
        )
        self.latency = Histogram(
            "enclave_infer_request_duration_seconds",
            "Time to answer",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("enclave_infer_requests_in_flight", "Requests at the enclave", registry=r)
        self.overloaded = Counter(
            "enclave_infer_requests_refused_overload",
            "Requests refused with 503 because the queue was full",
            registry=r,
        )
        self._enclave = _EnclaveCollector()
        r.register(self._enclave)

    def update(
        self,
        *,
        status: EnclaveStatus | None,
        restarts: int,
        attestation_ready: bool,
        collateral_expiry: float | None,
    ) -> None:
        """Take the enclave's side before a scrape (None: the enclave did not answer)."""
        self._enclave.set(status, restarts, attestation_ready, collateral_expiry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EnclaveCollector(Collector):
    """Metrics whose values come from the enclave's status at scrape time."""

    def __init__(self) -> None:
        self._status: EnclaveStatus | None = None
        self._restarts = 0
        self._ready = False
        self._expiry: float | None = None

    def set(self, status: EnclaveStatus | None, restarts: int, ready: bool, expiry: float | None) -> None:
        self._status, self._restarts, self._ready, self._expiry = status, restarts, ready, expiry

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        status = self._status
        yield _gauge("enclave_infer_enclave_up", "1 while the enclave process answers", 1 if status else 0)
        restarts = GaugeMetricFamily(
            "enclave_infer_enclave_restarts_total", "Enclave processes restarted after a crash"
        )
        restarts.add_metric([], self._restarts)
        yield restarts
        yield _gauge(
            "enclave_infer_attestation_ready",
            "1 while the host has evidence clients can verify",
            int(self._ready),
        )
        if self._expiry is not None:
            yield _gauge(
                "enclave_infer_collateral_expiry_timestamp_seconds",
                "When the served collateral expires",
                self._expiry,
            )
        if status is None:
            return
        yield _gauge(
            "enclave_infer_classifications_total",
            "Classifications the enclave answered",
            status.classifications,
        )
        yield _batch_histogram(status.batch_sizes)
        if status.model_sha256 is not None:
            info = GaugeMetricFamily(
                "enclave_infer_model_info", "The served model's public identity", labels=("sha256", "version")
            )
            info.add_metric([status.model_sha256, str(status.model_version)], 1)
            yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _batch_histogram(sizes: Mapping[int, int]) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound in BATCH_BUCKETS:
        cumulative = sum(n for size, n in sizes.items() if size <= bound)
        buckets.append((str(bound), cumulative))
    total = sum(sizes.values())
    buckets.append(("+Inf", total))
    family = HistogramMetricFamily("enclave_infer_batch_size", "Images per inference batch in the enclave")
    family.add_metric([], buckets, sum_value=sum(size * n for size, n in sizes.items()))
    return family
