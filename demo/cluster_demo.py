"""`make cluster-demo`: the service scaled out on Ray Serve, two replicas on a two-node Ray cluster.

Starts a head and a worker Ray node on loopback (demo/ray_cluster.py), deploys deploy/ray/serve.yaml
with this run's folders and port (`serve deploy`), provisions the demo model once through the head's
HTTP proxy, classifies the two photos and shows that both replicas answered; then kills the worker's
replica with SIGKILL, waits for Ray to replace it (the new replica joins by attested key release: the
model is not provisioned again) and classifies once more. Ray is driven through its own CLIs only, and
every Ray and enclave process of the run is gone when it ends, whether it succeeded or not.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import skimage
from ray_cluster import (
    APP,
    ENCLAVE_INFER_RAY_ENV,
    ClusterError,
    LocalCluster,
    Node,
    deploy_enclave_infer,
    replica_requests,
)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DEPLOYMENT = "EnclaveHost"
LABELS = HERE / "imagenet-classes.txt"
PHOTOS = ("chelsea.png", "coffee.png")
# EfficientNet-Lite0 normalises (x - 127) / 128 on 0..255 pixels: mean 127/255, std 128/255 on 0..1.
MEAN = ",".join([f"{127 / 255:.6f}"] * 3)
STD = ",".join([f"{128 / 255:.6f}"] * 3)
ROUNDS = 10  # each photo this many times per classification round: enough for both replicas to answer
# Every replica's host looks at the shared folder each second; a newly sealed model loads within two.
MODEL_PICKUP_SECONDS = 2.5
REPLACE_TIMEOUT_SECONDS = 180.0


class DemoError(Exception):
    """A step failed; the message says which and why, in one line."""


def say(text: str) -> None:
    print(f"cluster-demo: {text}", file=sys.stderr, flush=True)


def cli(*args: str) -> str:
    """Run `enclave-infer ARGS`; its stderr passes through, its stdout is returned."""
    done = subprocess.run([str(BIN / "enclave-infer"), *args], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise DemoError(f"`enclave-infer {args[0]}` failed (exit status {done.returncode})")
    return done.stdout


def nodes(cluster: LocalCluster) -> list[Node]:
    return [n for n in (cluster.head, cluster.worker) if n is not None]


def requests_per_node(cluster: LocalCluster) -> collections.Counter[str]:
    """Requests relayed so far by the replicas of each node (`/v1/ohttp` in their Ray access logs)."""
    counts: collections.Counter[str] = collections.Counter()
    for replica, n in replica_requests(cluster).items():  # "node:replica" -> n
        counts[replica.partition(":")[0]] += n
    return counts


def replicas(cluster: LocalCluster) -> list[dict[str, Any]]:
    app = (cluster.serve_applications().get("applications") or {}).get(APP) or {}
    found: list[dict[str, Any]] = app.get("deployments", {}).get(DEPLOYMENT, {}).get("replicas", [])
    return found


def deployment_problem(cluster: LocalCluster) -> str:
    """The last line of what Serve says of the deployment (a replica's exception ends with its message)."""
    try:
        app = (cluster.serve_applications().get("applications") or {}).get(APP) or {}
    except (OSError, ValueError):
        return ""
    message = str(app.get("deployments", {}).get(DEPLOYMENT, {}).get("message") or "")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return f"({DEPLOYMENT}: {lines[-1]})" if lines else ""


def classify(url: str, constraint: str, photos: list[str], cluster: LocalCluster) -> None:
    """Classify every photo ROUNDS times in one `classify`; print each photo's answer once, and how many
    requests each node's replica relayed."""
    before = requests_per_node(cluster)
    lines = cli("classify", url, constraint, *photos * ROUNDS).splitlines()
    for photo in photos:
        answers = list(dict.fromkeys(line for line in lines if line.startswith(f"{photo}: ")))
        if not answers:
            raise DemoError(f"no answer for {photo}")
        for answer in answers:  # one unless replicas disagreed
            print(answer, flush=True)
    counts = requests_per_node(cluster) - before
    say(f"{len(lines)} answers; requests per replica: head {counts['head']}, worker {counts['worker']}")
    if counts["head"] == 0 or counts["worker"] == 0:
        raise DemoError("one of the two replicas answered no request")


def enclaves_of(replica: int) -> list[int]:
    """The enclave processes that this replica process started (`python -m enclave_infer.enclave`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if parent == replica and b"enclave_infer.enclave" in argv:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_worker_replica(cluster: LocalCluster) -> tuple[int, list[int]]:
    """SIGKILL the worker node's replica; returns its pid and its enclaves' pids."""
    if cluster.worker is None:
        raise DemoError("no worker node")
    found = subprocess.run(
        ["pgrep", "-f", f"ServeReplica:{APP}:{DEPLOYMENT}"], capture_output=True, text=True, check=False
    )
    on_worker = set(cluster.worker.pids())
    pids = [int(p) for p in found.stdout.split() if int(p) in on_worker]
    if len(pids) != 1:
        raise DemoError(f"expected one replica process on the worker node, found {pids}")
    enclaves = enclaves_of(pids[0])
    os.kill(pids[0], signal.SIGKILL)
    return pids[0], enclaves


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while alive := [p for p in pids if Path(f"/proc/{p}").exists()]:
        if time.monotonic() > deadline:
            raise DemoError(f"the killed replica's enclave {alive} is still running after {timeout_s:.0f} s")
        time.sleep(0.25)


def wait_for_replacement(cluster: LocalCluster, old_ids: set[str]) -> dict[str, Any]:
    """Until two replicas are RUNNING, one of them new; returns the new one."""
    deadline = time.monotonic() + REPLACE_TIMEOUT_SECONDS
    states: list[str] = []
    while time.monotonic() < deadline:
        try:
            current = replicas(cluster)
        except (OSError, ValueError):  # the dashboard is busy: ask again
            current = []
        states = sorted(str(r.get("state")) for r in current)
        new = [r for r in current if r.get("replica_id") not in old_ids]
        if states == ["RUNNING", "RUNNING"] and new:
            return new[0]
        time.sleep(0.25)
    raise DemoError(f"no replacement replica RUNNING after {REPLACE_TIMEOUT_SECONDS:.0f} s: {states}")


def key_release_line(cluster: LocalCluster, pid: object) -> str | None:
    """What the replica with this pid logged about joining the cluster (its Ray worker's stderr)."""
    for node in nodes(cluster):
        for err in node.temp_dir.rglob(f"worker-*-{pid}.err"):
            for line in err.read_text(errors="replace").splitlines():
                if "joined the cluster through key release" in line:
                    return line.partition(": ")[2] or line
    return None


def run(model: Path, workdir: Path) -> None:
    work = workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    say(f"starting a two-node Ray cluster on loopback (logs: {workdir})")
    started = time.monotonic()
    with LocalCluster(BIN, work / "cluster", extra_env=ENCLAVE_INFER_RAY_ENV) as cluster:
        say(
            f"head node 127.0.0.3, worker node 127.0.0.2, dashboard {cluster.dashboard_url}"
            f" ({time.monotonic() - started:.0f} s)"
        )

        key = work / "owner.key"
        say("the model owner makes a signing key; the operator measures an empty enclave.toml")
        cli("keygen", str(key))
        (work / "enclave.toml").write_text("")
        code_hash = cli(
            "measure", "--config", str(work / "enclave.toml"), "--owner-public-key", f"{key}.pub"
        ).strip()
        constraint = f"C:{code_hash} SEC:INSECURE"
        say(f"constraint: {constraint}")

        say(f"serve deploy {workdir / 'serve.yaml'}: two replicas, one per node, each with its enclave")
        deploying = time.monotonic()
        try:
            url = deploy_enclave_infer(
                cluster, work, config=work / "enclave.toml", owner_public_key=key.with_suffix(".key.pub")
            )
        except ClusterError as exc:
            raise DemoError(f"{exc} {deployment_problem(cluster)}") from exc
        waited = time.monotonic() - deploying
        say(f"application {APP} RUNNING after {waited:.0f} s, at {url} (the head's Serve proxy)")

        say("the owner provisions EfficientNet-Lite0 (ONNX) and the ImageNet labels, once, to the cluster")
        print(
            cli("provision", url, constraint, str(model), str(LABELS), "--owner-key", str(key),
                "--mean", MEAN, "--std", STD, "--allow-duplicate-labels").strip(),
            flush=True,
        )  # fmt: skip
        time.sleep(MODEL_PICKUP_SECONDS)  # the other replica loads the sealed model from the shared folder
        photos = []
        for name in PHOTOS:
            shutil.copy(Path(skimage.data_dir) / name, work / name)
            photos.append(str(workdir / name))
        say(f"a submitter classifies the two photos, {ROUNDS} times each")
        classify(url, constraint, photos, cluster)

        old_ids = {str(r.get("replica_id")) for r in replicas(cluster)}
        killed, enclaves = kill_worker_replica(cluster)
        killed_at = time.monotonic()
        say(f"kill -9 {killed}: the worker node's replica")
        new = wait_for_replacement(cluster, old_ids)
        say(f"Ray replaced it in {time.monotonic() - killed_at:.1f} s: replica {new.get('replica_id')}")
        if enclaves:
            wait_gone(enclaves)
            say(f"the killed replica's enclave (pid {', '.join(map(str, enclaves))}) has exited with it")
        joined = key_release_line(cluster, new.get("pid"))
        if joined is None:
            raise DemoError(f"the new replica (pid {new.get('pid')}) logged no join by key release")
        say(f"the new replica {joined} (the model was not provisioned again)")

        say("the submitter classifies the photos again")
        classify(url, constraint, photos, cluster)
        say("tearing the cluster down")
    say(f"done in {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("build/cluster-demo"))
    args = parser.parse_args()
    if not args.model.is_file():
        print(f"cluster-demo: no model at {args.model} (make demo-model)", file=sys.stderr)
        return 1
    try:
        run(args.model, args.workdir)
    except (DemoError, ClusterError, OSError, ValueError, subprocess.SubprocessError) as exc:
        message = " ".join(str(exc).split())  # one line, even for a multi-line log tail
        print(f"cluster-demo: {message[:400]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cluster-demo: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
