"""Load on the whole confidential path, side by side with the in-process pipeline, in one run.

    python bench/load.py --model build/demo/efficientnet-lite0.onnx [--seconds 8] [--plot bench/load.png]
    python bench/load.py --model … --sizes 10,60,250     # provision time and enclave memory by size
    python bench/load.py --model … --soak 1800           # 30 minutes at saturation: memory and failures

Both sides get the same thread budget: one core. The server (`enclave-infer serve`, host and
simulated enclave) and the in-process pipeline (decode + preprocess + ONNX Runtime, the enclave's own
functions, unbatched, one thread per concurrent request) each run pinned to CPU 1 with `taskset`; the
load generator runs on CPU 0, in separate processes (one per concurrent client, each an SDK `Client`
doing OHTTP encapsulation, HTTP, and opening the answer), so that its work is not charged to the
server. Closed loop: each client sends its next image when the last is answered. Open loop: requests
arrive as a Poisson process at a fixed rate, whatever the answers do. Server CPU per image is read
from /proc (utime + stime of the host and the enclave process), as is the in-process pipeline's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")
CLI = str(Path(sys.executable).with_name("enclave-infer"))
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
SERVER_CPU, CLIENT_CPU = "1", "0"
# Open loop: clients kept attested and ready, shared by the arrivals (more than can be in flight).
OPEN_LOOP_CLIENTS = 32
TICKS = os.sysconf("SC_CLK_TCK")
# limits for the measured run: room for every client of the largest concurrency, batching on
CONFIG = """
[limits]
max_concurrent_requests = 32
"""


@dataclass
class Point:
    """One measured load level."""

    concurrency: int
    images: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    failures: int = 0

    @property
    def throughput(self) -> float:
        return self.images / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    @property
    def cpu_per_image(self) -> float:
        return self.cpu_seconds / self.images * 1000 if self.images else float("nan")


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0 for a process that has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


# -- the server ----------------------------------------------------------------------------------


class Server:
    """`enclave-infer serve` on CPU 1 in ``work`` with ``config`` as its enclave.toml. ``wait``: until
    it listens (else call :meth:`wait_listening`, e.g. after starting another one)."""

    def __init__(
        self,
        work: Path,
        model: Path | None = None,
        *,
        config: str = CONFIG,
        options: tuple[str, ...] = ("--max-in-flight", "256"),
        wait: bool = True,
    ) -> None:
        from enclave_infer.attestation.measurement import code_hash
        from enclave_infer.client._owner import generate_owner_key
        from enclave_infer.config import EnclaveConfig, load_public_key_file

        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        generate_owner_key(work / "owner.key")
        (work / "enclave.toml").write_text(config)
        self.config = EnclaveConfig.load(
            work / "enclave.toml", owner_public_key=load_public_key_file(work / "owner.key.pub")
        )
        self.constraint = f"C:{code_hash(self.config).hex()} SEC:INSECURE"
        self.log = work / "serve.log"
        self.url = ""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, CLI, "serve", "--port", "0", "--data-dir", str(work / "data"),
                 "--config", str(work / "enclave.toml"), "--owner-public-key", str(work / "owner.key.pub"),
                 *options],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.model = model
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 120
        while not (found := LISTENING.search(self.log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + self.log.read_text())
            time.sleep(0.1)
        self.url = found.group(1)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    @property
    def enclave_pid(self) -> int:
        return next(
            p
            for p in children(self.proc.pid)
            if "enclave_infer.enclave" in Path(f"/proc/{p}/cmdline").read_text()
        )

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def provision(self, model: Path, labels: Path, *extra: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            ["taskset", "-c", CLIENT_CPU, CLI, "provision", self.url, self.constraint, str(model), str(labels),
             "--owner-key", str(self.work / "owner.key"), "--quiet", "--allow-duplicate-labels", *extra],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"provision failed: {done.stderr}")
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            for pid in children(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


# -- load generators (separate processes) -------------------------------------------------------


def _client_closed(
    url: str, constraint: str, photos: list[bytes], start: float, stop: float, pin: bool, out: mp.Queue
) -> None:
    """One closed-loop client; ``pin``: on the client CPU (else wherever the system puts it)."""
    if pin:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    from enclave_infer import Client, EnclaveInferError

    latencies, failures = [], 0
    with Client(url, constraint) as client:
        client.attest()
        while time.time() < start:
            time.sleep(0.001)
        i = random.randrange(len(photos))
        while (now := time.time()) < stop:
            t = time.perf_counter()
            try:
                client.classify(photos[i % len(photos)])
                latencies.append(time.perf_counter() - t)
            except EnclaveInferError:
                failures += 1
            i += 1
            del now
    out.put((latencies, failures))


def _client_open(
    url: str, constraint: str, photos: list[bytes], start: float, arrivals: list[float], out: mp.Queue
) -> None:
    """Requests at the given arrival times (seconds from start), each sent by the next free client
    of a pool attested before the start, so a slow answer never delays the next arrival."""
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from enclave_infer import Client, EnclaveInferError

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    idle: queue.Queue[Client] = queue.Queue()
    for _ in range(OPEN_LOOP_CLIENTS):
        client = Client(url, constraint)
        client.attest()
        idle.put(client)

    def one(image: bytes, due: float) -> None:
        client = idle.get()
        try:
            client.classify(image)
            with lock:  # from the arrival time: waiting for a free client is queueing too
                latencies.append(time.perf_counter() - due)
        except EnclaveInferError:
            with lock:
                failures[0] += 1
        finally:
            idle.put(client)

    offset = time.perf_counter() - time.time()
    with ThreadPoolExecutor(max_workers=OPEN_LOOP_CLIENTS) as pool:
        for n, at in enumerate(arrivals):
            delay = start + at - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, photos[n % len(photos)], start + at + offset)
    out.put((latencies, failures[0]))


def run_clients(
    target: Callable[..., None], jobs: list[tuple[object, ...]], *, seconds: float
) -> tuple[list[float], int]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*job, out)) for job in jobs]
    for p in procs:
        p.start()
    latencies: list[float] = []
    failures = 0
    for _ in procs:
        got, failed = out.get(timeout=seconds + 300)  # clients answer when their run is over
        latencies += got
        failures += failed
    for p in procs:
        p.join()
    return latencies, failures


def closed_loop(server: Server, photos: list[bytes], concurrency: int, seconds: float) -> Point:
    start = time.time() + 2.0 + 0.05 * concurrency  # every client attested and waiting
    stop = start + seconds
    before = None

    def sample() -> None:
        nonlocal before
        time.sleep(max(0.0, start - time.time()))
        before = server.cpu()

    sampler = threading.Thread(target=sample)
    sampler.start()
    jobs = [(server.url, server.constraint, photos, start, stop, True) for _ in range(concurrency)]
    latencies, failures = run_clients(_client_closed, jobs, seconds=stop - time.time())
    sampler.join()
    assert before is not None
    cpu = server.cpu() - before
    return Point(concurrency, len(latencies), seconds, latencies, cpu, failures)


def open_loop(server: Server, photos: list[bytes], rate: float, seconds: float) -> Point:
    rng = random.Random(7)
    arrivals, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        arrivals.append(t)
    start = time.time() + 3.0
    before = server.cpu()
    latencies, failures = run_clients(
        _client_open,
        [(server.url, server.constraint, photos, start, arrivals)],
        seconds=start + seconds - time.time(),
    )
    cpu = server.cpu() - before
    return Point(0, len(latencies), seconds, latencies, cpu, failures)


# -- the in-process pipeline (a separate process on the server's core) ---------------------------


def _in_process(model: str, photos: list[bytes], concurrency: int, seconds: float, out: mp.Queue) -> None:
    os.sched_setaffinity(0, {int(SERVER_CPU)})
    import onnxruntime as ort

    from enclave_infer.client.export import DEMO_PREPROCESSING
    from enclave_infer.enclave.preprocess import decode_image, to_tensor
    from enclave_infer.protocol.api import Preprocessing

    pre = Preprocessing.from_json(DEMO_PREPROCESSING)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the thread budget the enclave gets on one core
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def pipeline(image: bytes) -> None:
        session.run(None, {name: to_tensor(decode_image(image, max_pixels=50_000_000), pre)})

    for image in photos:
        pipeline(image)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            t = time.perf_counter()
            pipeline(photos[i % len(photos)])
            with lock:
                latencies.append(time.perf_counter() - t)
            i += 1

    cpu0 = cpu_seconds(os.getpid())
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put((latencies, cpu_seconds(os.getpid()) - cpu0))


def in_process(model: Path, photos: list[bytes], concurrency: int, seconds: float) -> Point:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_in_process, args=(str(model), photos, concurrency, seconds, out))
    p.start()
    latencies, cpu = out.get(timeout=600)
    p.join()
    return Point(concurrency, len(latencies), seconds, latencies, cpu)


# -- model sizes -----------------------------------------------------------------------------------


def sized_model(path: Path, megabytes: int) -> None:
    """A real ONNX classifier of about ``megabytes``: mean colour → MatMul (3×H) → MatMul (H×1000),
    random weights, so ONNX Runtime keeps every byte."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = max(1, megabytes * 1_000_000 // (4 * 1003))
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W1"], ["h"]),
            helper.make_node("MatMul", ["h", "W2"], ["logits"]),
        ],
        "sized",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(rng.standard_normal((3, hidden), dtype=np.float32), "W1"),
            numpy_helper.from_array(rng.standard_normal((hidden, 1000), dtype=np.float32) * 0.01, "W2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def provision_by_size(sizes: list[int], labels: Path) -> list[dict[str, float]]:
    rows = []
    for megabytes in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model = work / f"model-{megabytes}.onnx"
            sized_model(model, megabytes)
            server = Server(work, model)
            try:
                enclave = server.enclave_pid
                base = rss_kb(enclave)
                reset_peak(enclave)
                seconds = server.provision(model, labels)
                peak = rss_kb(enclave, "VmHWM")
                size = model.stat().st_size
                rows.append({
                    "model_mb": size / 1e6, "seconds": seconds, "mb_per_s": size / 1e6 / seconds,
                    "enclave_growth_mb": (peak - base) / 1000, "times_model": (peak - base) * 1000 / size,
                })  # fmt: skip
            finally:
                server.stop()
    return rows


# -- soak ------------------------------------------------------------------------------------------


def soak(server: Server, photos: list[bytes], seconds: float, concurrency: int) -> dict[str, object]:
    samples: list[tuple[float, int, int]] = []
    stop_sampling = threading.Event()
    enclaves: set[int] = {server.enclave_pid}  # more than one: the enclave was restarted

    def sampler() -> None:
        started = time.monotonic()
        while not stop_sampling.wait(10):
            try:
                enclave = server.enclave_pid
                enclaves.add(enclave)
                samples.append((time.monotonic() - started, rss_kb(server.proc.pid), rss_kb(enclave)))
            except (OSError, StopIteration, RuntimeError):
                continue  # between an enclave's death and its restart

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    point = closed_loop(server, photos, concurrency, seconds)
    stop_sampling.set()
    thread.join()
    warm = [s for s in samples if s[0] > seconds * 0.1] or samples

    def spread(i: int) -> float:
        values = [s[i] for s in warm]
        return (max(values) - min(values)) / min(values) * 100

    def drift(i: int) -> float:
        """Median of the last tenth after warm-up against the first: a trend, not the jitter of the
        requests in flight at a sample."""
        values = [s[i] for s in warm]
        tenth = max(1, len(values) // 10)
        first, last = statistics.median(values[:tenth]), statistics.median(values[-tenth:])
        return (last - first) / first * 100

    return {
        "seconds": seconds, "images": point.images, "failures": point.failures,
        "throughput": point.throughput, "p50_ms": point.percentile(0.5), "p99_ms": point.percentile(0.99),
        "host_rss_mb": [round(s[1] / 1000, 1) for s in samples], "enclave_rss_mb": [round(s[2] / 1000, 1) for s in samples],
        "host_rss_spread_pct": spread(1), "enclave_rss_spread_pct": spread(2),
        "host_rss_drift_pct": drift(1), "enclave_rss_drift_pct": drift(2),
        "enclave_processes": len(enclaves),
    }  # fmt: skip


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument(
        "--open-loop", default="0.5,0.8,0.95", help="rates, as fractions of the saturation throughput"
    )
    parser.add_argument("--plot", type=Path, help="write the latency/throughput curve here (PNG)")
    parser.add_argument("--sizes", help="provision models of these sizes (MB) instead, e.g. 10,60,250")
    parser.add_argument("--soak", type=float, help="run at saturation this many seconds instead")
    parser.add_argument("--json", type=Path, help="write every figure here as well")
    args = parser.parse_args()
    import skimage

    photos = [(Path(skimage.data_dir) / p).read_bytes() for p in PHOTOS]
    labels = ROOT / "demo" / "imagenet-classes.txt"
    figures: dict[str, object] = {}
    if args.sizes:
        rows = provision_by_size([int(s) for s in args.sizes.split(",")], labels)
        print("model MB  provision s  MB/s   enclave growth MB  × model")
        for r in rows:
            print(f"{r['model_mb']:8.1f}  {r['seconds']:11.1f}  {r['mb_per_s']:5.1f}  {r['enclave_growth_mb']:17.0f}"
                  f"  {r['times_model']:7.2f}")  # fmt: skip
        figures["sizes"] = rows
    with tempfile.TemporaryDirectory() as tmp:
        if args.sizes:
            pass
        elif args.soak:
            server = Server(Path(tmp), args.model)
            try:
                server.provision(
                    args.model,
                    labels,
                    "--mean",
                    "0.498039,0.498039,0.498039",
                    "--std",
                    "0.501961,0.501961,0.501961",
                )
                result = soak(server, photos, args.soak, concurrency=8)
            finally:
                server.stop()
            print(json.dumps({k: v for k, v in result.items() if not k.endswith("rss_mb")}, indent=1))
            figures["soak"] = result
        else:
            figures.update(load_curve(args, photos, labels, Path(tmp)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def load_curve(args: argparse.Namespace, photos: list[bytes], labels: Path, work: Path) -> dict[str, object]:
    levels = [int(c) for c in args.concurrency.split(",")]
    server = Server(work, args.model)
    rows: list[dict[str, float]] = []
    opened: list[dict[str, float]] = []
    try:
        server.provision(
            args.model, labels, "--mean", "0.498039,0.498039,0.498039", "--std", "0.501961,0.501961,0.501961"
        )
        closed_loop(server, photos, 2, 2.0)  # warm up both sides
        in_process(args.model, photos, 1, 1.0)
        print(f"{'c':>3} | {'in-process':^29} | {'confidential path':^35} | ratio thr  cpu")
        print(
            f"{'':>3} | {'img/s':>7} {'p50':>6} {'p99':>6} {'ms cpu':>7} | {'img/s':>7} {'p50':>6} {'p99':>6} {'ms cpu':>7} {'fail':>5} |"
        )
        for c in levels:
            local = in_process(args.model, photos, c, args.seconds)
            remote = closed_loop(server, photos, c, args.seconds)
            row = {
                "concurrency": c,
                "local_throughput": local.throughput, "local_p50_ms": local.percentile(0.5),
                "local_p99_ms": local.percentile(0.99), "local_cpu_ms": local.cpu_per_image,
                "remote_throughput": remote.throughput, "remote_p50_ms": remote.percentile(0.5),
                "remote_p99_ms": remote.percentile(0.99), "remote_cpu_ms": remote.cpu_per_image,
                "failures": remote.failures,
                "throughput_ratio": remote.throughput / local.throughput,
                "cpu_ratio": remote.cpu_per_image / local.cpu_per_image,
            }  # fmt: skip
            rows.append(row)
            print(f"{c:>3} | {local.throughput:7.1f} {local.percentile(0.5):6.1f} {local.percentile(0.99):6.1f}"
                  f" {local.cpu_per_image:7.1f} | {remote.throughput:7.1f} {remote.percentile(0.5):6.1f}"
                  f" {remote.percentile(0.99):6.1f} {remote.cpu_per_image:7.1f} {remote.failures:5d} |"
                  f" {row['throughput_ratio']:5.2f} {row['cpu_ratio']:5.2f}", flush=True)  # fmt: skip
        saturation = max(r["remote_throughput"] for r in rows)
        best_local = max(r["local_throughput"] for r in rows)
        print(f"added p50 latency at c=1: {rows[0]['remote_p50_ms'] - rows[0]['local_p50_ms']:.1f} ms")
        print(f"saturation: confidential {saturation:.1f} img/s, in-process (unbatched) {best_local:.1f} img/s,"
              f" ratio {saturation / best_local:.2f}")  # fmt: skip
        for fraction in [float(f) for f in args.open_loop.split(",") if f]:
            point = open_loop(server, photos, fraction * saturation, args.seconds)
            opened.append({"rate": fraction * saturation, "throughput": point.throughput,
                           "p50_ms": point.percentile(0.5), "p99_ms": point.percentile(0.99),
                           "failures": point.failures})  # fmt: skip
            print(
                f"open loop at {fraction:.0%} of saturation ({fraction * saturation:.1f}/s): p50"
                f" {point.percentile(0.5):.1f} ms, p99 {point.percentile(0.99):.1f} ms, failures {point.failures}"
            )
    finally:
        server.stop()
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, opened, args.plot)
        print(f"wrote {args.plot}")
    return {"closed_loop": rows, "open_loop": opened}


def plot(rows: list[dict[str, float]], opened: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for side, label in (("local", "in-process (unbatched)"), ("remote", "confidential path")):
        xs = [r[f"{side}_throughput"] for r in rows]
        ax.plot(xs, [r[f"{side}_p50_ms"] for r in rows], "o-", label=f"{label}, p50")
        ax.plot(xs, [r[f"{side}_p99_ms"] for r in rows], "x--", label=f"{label}, p99")
        for r, x in zip(rows, xs, strict=True):
            ax.annotate(f"c={int(r['concurrency'])}", (x, r[f"{side}_p50_ms"]), fontsize=6, alpha=0.7)
    if opened:
        ax.plot(
            [o["throughput"] for o in opened], [o["p99_ms"] for o in opened], "s:", label="open loop, p99"
        )
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("EfficientNet-Lite0, one core each, closed loop c = 1…32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
