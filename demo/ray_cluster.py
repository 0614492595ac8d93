"""A real two-node Ray cluster on loopback, on this one machine, driven only through Ray's CLIs.

For the slow cluster test and `make cluster-demo`. Standard library only: this module never imports
ray, it runs `ray start` for a head node and for a worker node and kills them again.

Each node is its own Ray node with its own IP on the loopback network (127.0.0.0/8 is all loopback on
Linux), its own `--temp-dir` and its own ports:

- The head is 127.0.0.3, not 127.0.0.1: `ray start` replaces a `--node-ip-address` of "127.0.0.1",
  "localhost" or "::1" by the machine's outward IP (ray._private.services.resolve_ip_for_localhost),
  which is neither loopback nor predictable. Any other 127.x.y.z is taken as given. The dashboard, which
  `serve deploy -a` talks to, is bound to 127.0.0.1.
- The worker is 127.0.0.2.
- Each `ray start` runs in a session of its own (setsid). Every process of that node (GCS, raylet,
  dashboard, agents, and the workers that the raylet forks, replicas included) stays in that session
  unless it calls setsid() itself. Each also inherits a marker variable in its environment, and so does
  a process that left the session (a replica's `Popen(..., start_new_session=True)`, which Ray's own
  cleanup misses). The marker cannot be read back from every process (those that retitle themselves,
  `ray::*` and `ray-dashboard-*`, overwrite /proc/PID/environ), so a node is both: every process in its
  session or with its marker, SIGKILLed until none is left (`stop_worker`, `stop`).
- With `pin`, the head node's processes run on one CPU and the worker's on another (`taskset`; children
  inherit the affinity).

    with LocalCluster(Path(".venv/bin"), Path("build/cluster")) as cluster:
        subprocess.run(["serve", "deploy", "app.yaml", "-a", cluster.dashboard_url], env=cluster.env)
        ...
        cluster.stop_worker()   # the worker node dies at once, all of it
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HEAD_IP = "127.0.0.3"
WORKER_IP = "127.0.0.2"
DASHBOARD_HOST = "127.0.0.1"
MARKER_VAR = "ENCLAVE_INFER_RAY_NODE"
# The object store's minimum is 75 MiB; Ray's default (30% of RAM, per node) is far more than a test needs.
DEFAULT_OBJECT_STORE_BYTES = 128 * 1024 * 1024


class ClusterError(RuntimeError):
    """A node did not start, did not join, or did not die."""


@dataclass
class Node:
    """One Ray node of the cluster, as started by one `ray start`."""

    role: str  # "head" or "worker"
    ip: str
    temp_dir: Path
    marker: str  # value of MARKER_VAR in the environment of every process of this node
    cpu: int | None  # the CPU that its processes are pinned to, if pinned
    ports: dict[str, int] = field(default_factory=dict)
    session_id: int | None = None  # the session that `ray start` leads: pid of `ray start`
    node_id: str | None = None
    alive: bool = False

    def pids(self) -> list[int]:
        """The live processes of this node: its session, plus any process with its marker."""
        return _find_pids(_usable_session(self.session_id), f"{MARKER_VAR}={self.marker}")


class LocalCluster:
    """A head node and a worker node on loopback; a context manager that always tears them down."""

    def __init__(
        self,
        ray_bin_dir: Path,
        workdir: Path,
        *,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        pin: bool = True,
        object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
        extra_env: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
        global_ray_stop: bool = False,
    ) -> None:
        """`ray_bin_dir` holds the `ray` and `serve` scripts (a venv's bin/); `workdir` gets the logs of
        `ray start`. `extra_env` goes to both `ray start`s, and so to every Ray process (RAY_* settings).
        `global_ray_stop` makes `stop` also run `ray stop --force`, which kills every Ray process of every
        user on the machine, not only this cluster's: off by default."""
        self.ray_bin_dir = Path(ray_bin_dir).resolve()
        self.workdir = Path(workdir).resolve()
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.pin = pin
        self.object_store_bytes = object_store_bytes
        self.extra_env = dict(extra_env or {})
        self.start_timeout_s = start_timeout_s
        self.global_ray_stop = global_ray_stop
        self.head: Node | None = None
        self.worker: Node | None = None
        self.start_seconds: dict[str, float] = {}  # how long each phase of `start` took
        self._token = secrets.token_hex(6)
        self._worker_generation = 0
        self._stale_nodes: set[str] = set()  # ids of nodes killed by stop_worker, perhaps not yet DEAD
        self._temp_dirs: list[Path] = []
        self._cpus = self._choose_cpus() if pin else (None, None)

    # ------------------------------------------------------------------ public API

    @property
    def ray(self) -> str:
        return str(self.ray_bin_dir / "ray")

    @property
    def address(self) -> str:
        """The GCS address, for `ray start --address`, `ray status --address` and RAY_ADDRESS."""
        head = self._need_head()
        return f"{head.ip}:{head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard, for `serve deploy/status/shutdown -a`, `ray list --address`, the state API."""
        head = self._need_head()
        return f"http://{DASHBOARD_HOST}:{head.ports['dashboard-port']}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for subprocesses that use this cluster (`serve`, `ray`, a driver script)."""
        env = dict(os.environ)
        env["PATH"] = f"{self.ray_bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        if self.head is not None and self.head.ports:
            env["RAY_ADDRESS"] = self.address
            env["RAY_DASHBOARD_ADDRESS"] = self.dashboard_url  # the `serve` CLI's default for -a
            env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url  # `ray job` and `ray list`
        return env

    @property
    def serve_http_port(self) -> int:
        """A free port for `http_options.port` in the Serve config: the head node's proxy."""
        return self._need_head().ports["serve-http"]

    @property
    def worker_proxy_port(self) -> int:
        """The port that Serve's proxy on the worker node binds (when proxy_location is EveryNode)."""
        if self.worker is None:
            raise ClusterError("no worker node")
        return self.worker.ports["serve-http"]

    @property
    def node_ids(self) -> dict[str, str | None]:
        return {n.role: n.node_id for n in (self.head, self.worker) if n is not None}

    def start(self) -> LocalCluster:
        """Start the head node, then the worker node, and wait until the cluster has both alive.

        On any failure everything started so far is torn down before the exception propagates."""
        if self.head is not None:
            raise ClusterError("this LocalCluster was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)  # a driver that dies of an exception still cleans up
        try:
            t0 = time.monotonic()
            self.head = self._start_node("head", HEAD_IP, self.head_cpus, self._cpus[0])
            t1 = time.monotonic()
            self.start_seconds["head"] = t1 - t0
            self.start_worker()
            self.start_seconds["total"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self) -> Node:
        """Start the worker node (again, after `stop_worker`) and wait until the cluster sees it alive."""
        head = self._need_head()
        if self.worker is not None and self.worker.alive:
            raise ClusterError("the worker node is already running")
        t0 = time.monotonic()
        self._worker_generation += 1
        worker = self._start_node("worker", WORKER_IP, self.worker_cpus, self._cpus[1])
        self.worker = worker
        t1 = time.monotonic()
        self._wait_for_nodes({head.ip, worker.ip}, time.monotonic() + self.start_timeout_s)
        self.start_seconds["worker"] = t1 - t0
        self.start_seconds["worker_alive"] = time.monotonic() - t1
        return worker

    def stop_worker(self, timeout_s: float = 15.0) -> list[int]:
        """Kill the worker node hard: SIGKILL to the raylet and every process of that node. Returns the
        pids killed; raises ClusterError if any survives `timeout_s`. The head is left running: it
        notices the dead node by itself, as it would a crashed machine."""
        if self.worker is None:
            return []
        if self.worker.node_id is not None:
            self._stale_nodes.add(self.worker.node_id)
        return self._kill_node(self.worker, timeout_s)

    def stop(self) -> None:
        """Tear everything down: kill both nodes (and anything that carries their marker), then remove
        their temp dirs. Idempotent; never raises for what is already gone."""
        errors: list[str] = []
        for node in (self.worker, self.head):
            if node is None:
                continue
            try:
                self._kill_node(node, timeout_s=15.0)
            except ClusterError as e:
                errors.append(str(e))
        if self.global_ray_stop:
            subprocess.run(
                [self.ray, "stop", "--force"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=120,
            )
        for d in self._temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._temp_dirs.clear()
        atexit.unregister(self.stop)
        if errors:
            raise ClusterError("; ".join(errors))

    def serve_applications(self) -> dict[str, Any]:
        """What `serve status` prints, as JSON: the dashboard's GET /api/serve/applications/."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/serve/applications/", timeout=10) as resp:  # noqa: S310
            body: dict[str, Any] = json.load(resp)
        return body

    def wait_for_app(self, name: str, timeout_s: float = 120.0) -> float:
        """Wait until application `name` is RUNNING and every Serve proxy is HEALTHY; returns the seconds
        waited. An application is RUNNING as soon as its replicas are, which can be before the worker
        node's proxy listens. Raises ClusterError on DEPLOY_FAILED or at the timeout."""
        t0 = time.monotonic()
        last: object = None
        while True:
            try:
                body = self.serve_applications()
                app = (body.get("applications") or {}).get(name) or {}
                proxies = [p.get("status") for p in (body.get("proxies") or {}).values()]
                last = (app.get("status"), proxies)
                if app.get("status") == "DEPLOY_FAILED":
                    raise ClusterError(f"application {name} failed to deploy: {app.get('message')}")
                if app.get("status") == "RUNNING" and proxies and all(p == "HEALTHY" for p in proxies):
                    return time.monotonic() - t0
            except (OSError, ValueError) as e:
                last = e
            if time.monotonic() - t0 > timeout_s:
                raise ClusterError(f"application {name} not RUNNING after {timeout_s}s; last: {last!r}")
            time.sleep(0.25)

    def nodes_alive(self) -> dict[str, str]:
        """node ip -> node id of the nodes that the cluster's state API reports ALIVE."""
        return {ip: node_id for ip, (node_id, state) in self._list_nodes().items() if state == "ALIVE"}

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _need_head(self) -> Node:
        if self.head is None or not self.head.ports:
            raise ClusterError("the cluster is not started")
        return self.head

    @staticmethod
    def _choose_cpus() -> tuple[int, int]:
        cpus = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None:
            raise ClusterError("pin=True needs `taskset` (util-linux)")
        return cpus[0], cpus[1 % len(cpus)]

    def _start_node(self, role: str, ip: str, num_cpus: int, cpu: int | None) -> Node:
        # Short: Ray puts unix sockets under it, and a socket path is at most 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"ray-{role[0]}", dir="/tmp"))
        self._temp_dirs.append(temp_dir)
        node = Node(
            role=role,
            ip=ip,
            temp_dir=temp_dir,
            marker=f"{self._token}-{role}-{self._worker_generation if role == 'worker' else 0}",
            cpu=cpu,
        )
        names = [
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "node-manager-port",
            "object-manager-port",
        ]
        if role == "head":
            names = ["port", "dashboard-port", "ray-client-server-port", *names]
        # Serve's proxies: the head's binds http_options.port of the Serve config (`serve_http_port` is a
        # free one to put there); a worker node's binds RAY_SERVE_WORKER_PROXY_HTTP_PORT, else the same
        # port, which on one machine Serve's SO_REUSEPORT (SERVE_SOCKET_REUSE_PORT_ENABLED, on by default)
        # would silently share between the two proxies. Leave SO_REUSEPORT on: it is also what lets a
        # restarted proxy bind its port again while connections of the old one are in TIME_WAIT.
        names += ["serve-http", "serve-grpc"]
        node.ports = dict(zip(names, free_ports(len(names)), strict=True))
        if role == "head":
            self.head = node  # so that `address` works for the worker's command line
        cmd = [self.ray, "start", f"--node-ip-address={ip}", f"--num-cpus={num_cpus}"]
        if role == "head":
            cmd += ["--head", f"--dashboard-host={DASHBOARD_HOST}", "--include-dashboard=true"]
        else:
            cmd += [f"--address={self.address}"]
        cmd += [f"--{name}={port}" for name, port in node.ports.items() if not name.startswith("serve-")]
        cmd += [
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            "--log-style=record",
            "--log-color=false",
        ]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        env = self.env
        env.pop("RAY_ADDRESS", None)  # `ray start --head` must not try to join an existing cluster
        env.update(self.extra_env)
        env[MARKER_VAR] = node.marker
        if role == "worker":
            env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(node.ports["serve-http"])
            env["RAY_SERVE_WORKER_PROXY_GRPC_PORT"] = str(node.ports["serve-grpc"])
        log_path = self.workdir / f"ray-start-{role}.log"
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            # Not a pipe: the daemons that `ray start` leaves behind could hold it open forever.
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: the node's processes are this session
            )
        node.session_id = proc.pid
        node.alive = True
        try:
            rc = proc.wait(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ClusterError(f"`ray start` for the {role} did not return: {_tail(log_path)}") from None
        if rc != 0:
            raise ClusterError(f"`ray start` for the {role} failed ({rc}): {_tail(log_path)}")
        return node

    def _list_nodes(self) -> dict[str, tuple[str, str]]:
        """node ip -> (node id, state), from the state API that `ray list nodes` uses."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=false"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (an http:// URL we built)
            body = json.load(resp)
        rows = body.get("data", {}).get("result", {}).get("result", [])
        # A node restarted on the same address is a new row; the old one stays, DEAD: the live one wins.
        nodes: dict[str, tuple[str, str]] = {}
        for row in sorted(rows, key=lambda r: r["state"] == "ALIVE"):
            if row["node_id"] not in self._stale_nodes:
                nodes[row["node_ip"]] = (row["node_id"], row["state"])
        return nodes

    def _wait_for_nodes(self, ips: set[str], deadline: float) -> None:
        last: object = None
        while True:
            try:
                alive = self.nodes_alive()
                last = alive
                if ips <= alive.keys():
                    for node in (self.head, self.worker):
                        if node is not None and node.ip in alive:
                            node.node_id = alive[node.ip]
                    return
            except (OSError, ValueError, KeyError) as e:  # the dashboard is not up yet, or a bad answer
                last = e
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes {sorted(ips)} not all alive; last answer: {last!r}")
            time.sleep(0.25)

    def _kill_node(self, node: Node, timeout_s: float) -> list[int]:
        killed: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while True:
            pids = node.pids()
            if not pids:
                node.alive = False
                # Once its session is empty its number may be reused: from now on only the marker counts.
                node.session_id = None
                return sorted(killed)
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.role} node: processes {pids} survive SIGKILL")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)


# ---------------------------------------------------------------------- helpers


def free_ports(n: int, host: str = "") -> list[int]:
    """`n` distinct TCP ports that are free right now (held open together, so no two are the same)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _iter_procs() -> Iterator[tuple[int, str, int]]:
    """(pid, state, session id) of every process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        yield int(entry.name), fields[0].decode(), int(fields[3])


def _has_env(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


def _usable_session(session_id: int | None) -> int | None:
    """`session_id` if it can still only be ours. Its leader, `ray start`, exits once the node is up, and
    the kernel does not hand out the number again while any process of the session lives; so a live
    process with that pid means the session is gone and the number reused."""
    if session_id is None or os.path.exists(f"/proc/{session_id}"):
        return None
    return session_id


def _find_pids(session_id: int | None, env_entry: str) -> list[int]:
    """Live (not zombie) processes in `session_id`, or whose environment holds `env_entry`."""
    me = os.getpid()
    entry = env_entry.encode()
    found = []
    for pid, state, sid in _iter_procs():
        if pid == me or state in ("Z", "X"):
            continue
        if (session_id is not None and sid == session_id) or _has_env(pid, entry):
            found.append(pid)
    return found


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------- CLI

_STATE_FILE = "cluster.json"


def _cli_up(ray_bin_dir: Path, workdir: Path, pin: bool) -> int:
    cluster = LocalCluster(ray_bin_dir, workdir, pin=pin)
    cluster.start()
    atexit.unregister(cluster.stop)  # `up` leaves the cluster running, for `down`
    head, worker = cluster.head, cluster.worker
    if head is None or worker is None:
        raise ClusterError("cluster did not start")
    state = {
        "address": cluster.address,
        "dashboard_url": cluster.dashboard_url,
        "node_ids": cluster.node_ids,
        "start_seconds": cluster.start_seconds,
        "nodes": [
            {
                "role": n.role,
                "ip": n.ip,
                "temp_dir": str(n.temp_dir),
                "marker": n.marker,
                "session_id": n.session_id,
            }
            for n in (head, worker)
        ],
    }
    (workdir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    print(json.dumps(state, indent=2))
    print(f"export RAY_ADDRESS={cluster.address} RAY_DASHBOARD_ADDRESS={cluster.dashboard_url}")
    return 0


def _cli_down(workdir: Path) -> int:
    path = workdir / _STATE_FILE
    if not path.exists():
        print(f"no {path}: nothing to stop", file=sys.stderr)
        return 0
    state = json.loads(path.read_text())
    failed = False
    for n in state["nodes"]:
        node = Node(role=n["role"], ip=n["ip"], temp_dir=Path(n["temp_dir"]), marker=n["marker"], cpu=None)
        node.session_id = n["session_id"]  # Node.pids() drops it if it may have been reused since
        deadline = time.monotonic() + 15
        while pids := node.pids():
            if time.monotonic() > deadline:
                print(f"{node.role}: {pids} survive", file=sys.stderr)
                failed = True
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        shutil.rmtree(node.temp_dir, ignore_errors=True)
    path.unlink()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--ray-bin-dir", type=Path, default=Path(sys.executable).parent)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    if args.command == "up":
        workdir.mkdir(parents=True, exist_ok=True)
        return _cli_up(args.ray_bin_dir, workdir, pin=not args.no_pin)
    return _cli_down(workdir)


if __name__ == "__main__":
    sys.exit(main())


# -- enclave-infer on the cluster ------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "deploy" / "ray" / "serve.yaml"
APP = "enclave-infer"
# On every `ray start`: the proxy answers 503 + Retry-After for a replica lost mid-request (the SDK
# retries it), and spreads requests over the replicas of both nodes rather than its own node's first.
ENCLAVE_INFER_RAY_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "enclave_infer.host.ray_serve:proxy_middlewares",
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
}


def deploy_enclave_infer(
    cluster: LocalCluster,
    work: Path,
    *,
    config: Path,
    owner_public_key: Path,
    replicas: int | None = None,
    timeout_s: float = 180.0,
) -> str:
    """`serve deploy deploy/ray/serve.yaml` as it is, but for this cluster's HTTP port and folders under
    `work` (and `replicas`, if given); waits until the application runs. Returns its URL."""
    text = SERVE_CONFIG.read_text()
    for placeholder, value in (
        ("build/ray/enclave.toml", str(config)),
        ("build/ray/owner.key.pub", str(owner_public_key)),
        ("build/ray/shared", str(work / "shared")),
        ("build/ray/data", str(work / "data")),
        ("port: 8000", f"port: {cluster.serve_http_port}"),
        *((("num_replicas: 2", f"num_replicas: {replicas}"),) if replicas is not None else ()),
    ):
        if placeholder not in text:
            raise ClusterError(f"{SERVE_CONFIG.name} no longer has {placeholder!r}")
        text = text.replace(placeholder, value)
    path = work / "serve.yaml"
    path.write_text(text)
    done = subprocess.run(
        [str(cluster.ray_bin_dir / "serve"), "deploy", str(path), "-a", cluster.dashboard_url],
        env=cluster.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ClusterError(f"serve deploy failed: {done.stderr.strip()[-500:]}")
    cluster.wait_for_app(APP, timeout_s=timeout_s)
    return f"http://127.0.0.1:{cluster.serve_http_port}"


def replica_requests(cluster: LocalCluster) -> dict[str, int]:
    """Requests each replica relayed (`/v1/ohttp` lines in its Ray access log): "node:replica" -> n."""
    counts: dict[str, int] = {}
    for node in (cluster.head, cluster.worker):
        if node is None:
            continue
        for log in Path(node.temp_dir).rglob(f"replica_{APP}_EnclaveHost_*.log"):
            text = log.read_text(errors="replace")
            counts[f"{node.role}:{log.stem.rpartition('_')[2]}"] = text.count("/v1/ohttp")
    return counts
