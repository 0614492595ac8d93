"""Scale-out on Ray Serve, measured: one replica on one core against two replicas on two cores,
through the whole path (SDK → Ray's HTTP proxy → replica host → enclave), in one run.

    python bench/ray_scale.py --model build/demo/efficientnet-lite0.onnx [--seconds 20]

A two-node Ray cluster on loopback (demo/ray_cluster.py), each node pinned to its own core with
`taskset`. Phase A: the worker node is stopped and one replica serves, on the head's core, with the
proxy. Phase B: the worker node is back and two replicas serve, one per core; the second replica joins
by key release and loads the model the owner provisioned in phase A. The load generator is closed loop
(each client sends its next image when the last is answered), in separate processes, unpinned: on this
2-core machine it shares the cores with the servers, in both phases alike.

CPU per request is read from /proc for each part: the replicas (hosts and their enclaves), Ray's
proxy, and the rest of Ray (controller, GCS, raylets, dashboard). The paper estimate for 8 and 64
replicas follows from those per-request and per-second costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.ray_cluster import ENCLAVE_INFER_RAY_ENV, LocalCluster, deploy_enclave_infer  # noqa: E402
from load import _client_closed, cpu_seconds, run_clients  # noqa: E402

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")
BIN = Path(sys.executable).parent
# EfficientNet-Lite0 normalises (x - 127) / 128: as demo/run.py provisions it
NORMALISE = ("--mean", "0.498039,0.498039,0.498039", "--std", "0.501961,0.501961,0.501961")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parts(cluster: LocalCluster, work: Path) -> dict[str, list[int]]:
    """The cluster's processes by part: replicas (hosts and enclaves), the proxy, the rest of Ray."""
    nodes = [n for n in (cluster.head, cluster.worker) if n is not None and n.alive]
    ray = {p for n in nodes for p in n.pids()}
    enclaves = {
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and "enclave_infer.enclave" in (c := cmdline(int(p.name))) and str(work) in c
    }
    replicas = {p for p in ray if "ServeReplica" in cmdline(p)}
    proxy = {p for p in ray if "ProxyActor" in cmdline(p)}
    controller = {p for p in ray if "ServeController" in cmdline(p)}
    return {
        "replicas": sorted(replicas | enclaves),
        "proxy": sorted(proxy),
        "controller": sorted(controller),
        "rest of ray": sorted(ray - replicas - proxy - controller),
    }


def measure(
    cluster: LocalCluster,
    work: Path,
    url: str,
    constraint: str,
    photos: list[bytes],
    clients: int,
    seconds: float,
) -> dict[str, object]:
    start = time.time() + 3.0 + 0.1 * clients  # every client attested and waiting
    stop = start + seconds
    groups = parts(cluster, work)
    before: dict[str, float] = {}

    def sample() -> None:
        time.sleep(max(0.0, start - time.time()))
        before.update({name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()})

    sampler = threading.Thread(target=sample)
    sampler.start()
    # load.py's closed-loop clients, unpinned: the two cores are the servers' here
    jobs = [(url, constraint, photos, start, stop, False) for _ in range(clients)]
    latencies, failures = run_clients(_client_closed, jobs, seconds=stop - time.time())
    sampler.join()
    after = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    n = len(latencies)
    latencies.sort()
    cpu = {name: after[name] - before[name] for name in groups}
    return {
        "clients": clients,
        "requests": n,
        "failures": failures,
        "throughput": n / seconds,
        "p50_ms": 1000 * latencies[n // 2] if n else None,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else None,
        "cpu_ms_per_request": {name: 1000 * cpu[name] / max(n, 1) for name in cpu},
        "cpu_per_second": {name: cpu[name] / seconds for name in cpu},
    }


def provision(url: str, constraint: str, model: Path, owner_key: Path) -> None:
    cli = str(BIN / "enclave-infer")
    done = subprocess.run(
        [cli, "provision", url, constraint, str(model), str(ROOT / "demo" / "imagenet-classes.txt"),
         "--owner-key", str(owner_key), "--quiet", "--allow-duplicate-labels", *NORMALISE],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"provision failed: {done.stderr}")


def wait_for_replicas(cluster: LocalCluster, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = cluster.serve_applications().get("applications", {}).get("enclave-infer", {})
        replicas = app.get("deployments", {}).get("EnclaveHost", {}).get("replicas", [])
        if [r.get("state") for r in replicas] == ["RUNNING"] * count:
            return
        time.sleep(0.5)
    raise SystemExit(f"not {count} replicas running after {timeout} s")


def estimate(one: dict[str, Any], two: dict[str, Any], efficiency: float) -> dict[str, object]:
    """8 and 64 replicas on paper, from the measured costs. Routing is O(1) per request (Ray's
    power-of-two-choices), so per request the proxy costs what it cost here, whatever N; a proxy
    saturates at 1000 / proxy ms requests/s. With one proxy (HeadOnly, as in serve.yaml) that caps
    the cluster; with one proxy per node (EveryNode, as in rayservice.yaml) behind a load balancer,
    each node pays its own proxy's share and N nodes scale as two did here. The controller
    health-checks every replica: its CPU per replica-second, times N, is what it needs (on the head)."""
    proxy_ms = float(two["cpu_ms_per_request"]["proxy"])
    per_replica = float(one["throughput"])  # requests/s one replica serves here, proxy included
    controller_per_replica = float(two["cpu_per_second"]["controller"]) / 2
    proxy_cap = 1000 / proxy_ms
    rows: dict[str, object] = {}
    for n in (8, 64):
        linear = n * per_replica
        rows[str(n)] = {
            "linear_requests_per_s": round(linear),
            "one_proxy_requests_per_s": round(min(linear * efficiency, proxy_cap)),
            "one_proxy_efficiency": round(min(linear * efficiency, proxy_cap) / linear, 2),
            "proxy_per_node_requests_per_s": round(linear * efficiency),
            "proxy_per_node_efficiency": round(efficiency, 2),
            "proxy_cores_in_all": round(linear * efficiency * proxy_ms / 1000, 1),
            "controller_cores": round(n * controller_per_replica, 2),
        }
    return {"proxy_ms_per_request": round(proxy_ms, 2), "one_proxy_saturates_at": round(proxy_cap), "n": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients-per-replica", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import skimage

    from enclave_infer.attestation.measurement import code_hash
    from enclave_infer.client._owner import generate_owner_key
    from enclave_infer.config import EnclaveConfig, load_public_key_file

    photos = [(Path(skimage.data_dir) / p).read_bytes() for p in PHOTOS]
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as tmp:
        work = Path(tmp)
        generate_owner_key(work / "owner.key")
        (work / "enclave.toml").write_text("")
        pub = work / "owner.key.pub"
        config = EnclaveConfig.load(work / "enclave.toml", owner_public_key=load_public_key_file(pub))
        constraint = f"C:{code_hash(config).hex()} SEC:INSECURE"
        with LocalCluster(BIN, work / "cluster", extra_env=ENCLAVE_INFER_RAY_ENV) as cluster:
            print(f"cluster: two nodes in {cluster.start_seconds['total']:.1f} s", flush=True)
            cluster.stop_worker()
            url = deploy_enclave_infer(
                cluster, work, config=work / "enclave.toml", owner_public_key=pub, replicas=1
            )
            provision(url, constraint, args.model, work / "owner.key")
            print("A: one replica on one core ...", flush=True)
            measure(cluster, work, url, constraint, photos, args.clients_per_replica, 5.0)  # warm up
            one = measure(cluster, work, url, constraint, photos, args.clients_per_replica, args.seconds)
            cluster.start_worker()
            deploy_enclave_infer(
                cluster, work, config=work / "enclave.toml", owner_public_key=pub, replicas=2
            )
            wait_for_replicas(cluster, 2)
            print("B: two replicas on two cores ...", flush=True)
            measure(cluster, work, url, constraint, photos, 2 * args.clients_per_replica, 5.0)
            two = measure(cluster, work, url, constraint, photos, 2 * args.clients_per_replica, args.seconds)
    efficiency = float(two["throughput"]) / (2 * float(one["throughput"]))
    figures = {
        "one_replica": one,
        "two_replicas": two,
        "efficiency": efficiency,
        "estimate": estimate(one, two, efficiency),
    }
    print(json.dumps(figures, indent=1))
    print(
        f"\nthroughput: one replica {one['throughput']:.1f}/s, two replicas {two['throughput']:.1f}/s:"
        f" {float(two['throughput']) / float(one['throughput']):.2f}×, efficiency {efficiency:.2f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
