"""Scale-out on Ray Serve, with real processes: a Ray cluster of a head and a worker node on this
machine (``ray start``), the application deployed with ``serve deploy`` from ``deploy/ray/serve.yaml``,
two replicas each with its own enclave, joined by attested key release.

Ray is driven through its own command-line tools only; this process never imports ray. One cluster
for the module (starting one takes ~25 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from demo.ray_cluster import APP, ENCLAVE_INFER_RAY_ENV, LocalCluster, deploy_enclave_infer, replica_requests

from enclave_infer import Client, generate_owner_key, load_owner_key
from enclave_infer.config import EnclaveConfig, load_public_key_file
from enclave_infer.enclave.platform import code_hash
from tests.e2e.conftest import COLOUR_LABELS, colour_model, png
from tests.recording import Recorder

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RED, BLUE = png((230, 20, 20)), png((20, 20, 230))


@dataclass
class RayApp:
    cluster: LocalCluster
    url: str
    constraint: str
    owner_key: Path
    workdir: Path
    recorder: Recorder

    def replica_logs(self) -> dict[str, int]:
        return replica_requests(self.cluster)

    def enclaves(self) -> set[int]:
        """The enclave processes of this deployment's replicas."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"enclave_infer.enclave" in cmdline and any(str(self.workdir).encode() in a for a in cmdline):
                found.add(int(entry.name))
        return found

    def replicas(self) -> set[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"ServeReplica:{APP}:EnclaveHost"], capture_output=True, text=True
        )
        return {int(p) for p in out.stdout.split()}

    def wait_for_two_replicas(self, *, replacing: set[int], timeout: float = 150) -> None:
        """Until two replicas run again, each with a live enclave, none of them in ``replacing``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            app = self.cluster.serve_applications().get("applications", {}).get(APP, {})
            replicas = app.get("deployments", {}).get("EnclaveHost", {}).get("replicas", [])
            states = sorted(r.get("state") for r in replicas)
            enclaves = self.enclaves()
            if states == ["RUNNING", "RUNNING"] and len(enclaves) == 2 and not enclaves & replacing:
                return
            time.sleep(0.5)
        raise AssertionError(f"no two replicas with new enclaves after {timeout} s: {states}")


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayApp]:
    work = tmp_path_factory.mktemp("ray")
    key = work / "owner.key"
    generate_owner_key(key)
    (work / "enclave.toml").write_text("")
    config = EnclaveConfig.load(
        work / "enclave.toml", owner_public_key=load_public_key_file(Path(f"{key}.pub"))
    )
    constraint = f"C:{code_hash(config).hex().upper()} SEC:INSECURE"
    with LocalCluster(BIN, work / "cluster", extra_env=ENCLAVE_INFER_RAY_ENV) as cluster:
        deploy_enclave_infer(cluster, work, config=work / "enclave.toml", owner_public_key=Path(f"{key}.pub"))
        recorder = Recorder(("127.0.0.1", cluster.serve_http_port))
        try:
            yield RayApp(cluster, f"http://127.0.0.1:{recorder.port}", constraint, key, work, recorder)
        finally:
            recorder.close()


def provisioned(app: RayApp) -> int:
    """The served version, provisioning the colour model first if nothing is served."""
    with Client(app.url, app.constraint) as client:
        info = client.model_info()
        if info is None:
            info = client.provision(colour_model(), COLOUR_LABELS, load_owner_key(app.owner_key)).model
    return info.version


def test_provisioned_once_every_replica_answers_and_ray_sees_no_plaintext(ray_app: RayApp) -> None:
    before = ray_app.replica_logs()
    version = provisioned(ray_app)
    time.sleep(2 * 1.0 + 0.5)  # every host looks at the shared folder each second
    # At least 40 classifications, and on until both nodes' replicas have answered (a busy machine
    # may take longer than the sleep above to load the model on the other node), within a minute.
    deadline = time.monotonic() + 60
    answered: dict[str, int] = {}
    with Client(ray_app.url, ray_app.constraint) as client:
        sent = 0
        while sent < 40 or (len([c for c in answered.values() if c]) < 2 and time.monotonic() < deadline):
            for _ in range(10):
                result = client.classify(RED, top=1)
                assert result.results[0].label == "red"
                assert result.model_version == version  # every replica serves the one provisioned model
            sent += 10
            after = ray_app.replica_logs()
            answered = {name: after[name] - before.get(name, 0) for name in after}
    assert len([n for n in answered if answered[n] > 0]) >= 2, answered  # both replicas answered
    assert {n.partition(":")[0] for n, c in answered.items() if c} == {"head", "worker"}
    # what went past Ray's HTTP port: ciphertext only
    wire = ray_app.recorder.sent + ray_app.recorder.received
    assert b"/v1/ohttp" in wire  # the recorder did see the traffic
    for secret in (RED[60:120], colour_model()[:64], b"grey", b'"label"'):
        assert secret not in wire


@dataclass
class Load:
    """Clients classifying without pause, each on its own thread, as a service's users would."""

    app: RayApp
    clients: int = 4
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        with Client(self.app.url, self.app.constraint) as client:
            while not self._stop.is_set():
                try:
                    label = client.classify(BLUE, top=1).results[0].label
                    assert label == "blue", label
                    self.ok += 1
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a classification hangs"


def test_faults_under_load_lose_no_classification(ray_app: RayApp) -> None:
    """kill -9 a replica's enclave, then a replica, then the worker node, under continuous load:
    every classification succeeds (the SDK retries the 503s), and each replacement joins through
    key release and serves the current model."""
    version = provisioned(ray_app)
    ray_app.wait_for_two_replicas(replacing=set())
    with Load(ray_app) as load:
        time.sleep(2)
        # 1. an enclave
        enclaves = ray_app.enclaves()
        os.kill(min(enclaves), signal.SIGKILL)
        ray_app.wait_for_two_replicas(replacing=enclaves & {min(enclaves)})
        time.sleep(2)
        # 2. a replica (its host): its enclave sees the host gone and exits too
        replica = max(ray_app.replicas())
        orphaned = {e for e in ray_app.enclaves() if parent(e) == replica}
        os.kill(replica, signal.SIGKILL)
        ray_app.wait_for_two_replicas(replacing=orphaned)
        time.sleep(2)
        # 3. the worker node, every process of it; then it comes back, and a replica with it
        assert ray_app.cluster.worker is not None
        on_worker = set(ray_app.cluster.worker.pids())
        lost = {e for e in ray_app.enclaves() if parent(e) in on_worker}
        assert lost
        ray_app.cluster.stop_worker()
        time.sleep(3)
        ray_app.cluster.start_worker()
        ray_app.wait_for_two_replicas(replacing=lost)
        counts_before = ray_app.replica_logs()
        time.sleep(4)
    assert not load.errors, load.errors[:5]
    assert load.ok > 100
    # the replacements answer, with the model provisioned before any of them started
    counts = ray_app.replica_logs()
    fresh = {n: c - counts_before.get(n, 0) for n, c in counts.items() if c > counts_before.get(n, 0)}
    assert {n.partition(":")[0] for n in fresh} == {"head", "worker"}, fresh
    with Client(ray_app.url, ray_app.constraint) as client:
        assert client.model_info() is not None and client.model_info().version == version  # type: ignore[union-attr]
