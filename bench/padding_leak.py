"""What the ciphertext's lengths tell an observer, with padding off and on, side by side in one run.

    python bench/padding_leak.py --model build/demo/efficientnet-lite0.onnx [--generated 300] [--json PATH]

Two `enclave-infer serve` servers (host and simulated enclave, pinned to CPU 1 with `taskset`), each
provisioned with the demo model as `bench/load.py` does: one with `[padding] enabled = false`, one
with the default (on). Images: scikit-image's colour photos, and images generated from them (seeded:
random crops, rotations, flips, colour jitter and sizes, saved as PNG or JPEG at random settings), so
that many different top labels occur. Every image is classified with top=1 and top=5 on both servers,
alternating which goes first image by image so that noise hits both alike, through SDK clients (on
CPU 0) whose HTTP transport records the length of each encapsulated request and response.

The leak: an observer who sees only the response's length guesses the top label. Measured as the
number of distinct lengths, the leave-one-out accuracy of the best guess from the length (for each
length, its most frequent label among the other images; ties count as a uniform random pick), against
always guessing the most frequent label, and the plug-in mutual information between length and label
(with the mean over shuffled labels beside it: the estimate's bias at this sample size); and, for an
observer who also knows the label list, how many of the 1,000 classes an unpadded top=1 length leaves
open. With padding on, every answer for one ``top`` must have one length (asserted). The cost:
request padding overhead, bytes on the wire, latency per classification and server CPU per request
(from /proc: utime + stime of host and enclave).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from load import CLIENT_CPU, Server

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "demo" / "imagenet-classes.txt"
# scikit-image's colour photographs: load.py's five, then the rest of its colour images
PHOTOS = (
    "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png", "logo.png",
)  # fmt: skip
# EfficientNet-Lite0: (x - 127) / 128 on 0..255 pixels (demo/run.py)
MEAN = ",".join([f"{127 / 255:.6f}"] * 3)
STD = ",".join([f"{128 / 255:.6f}"] * 3)
TOPS = (1, 5)
SIDES = ("off", "on")
SHUFFLES = 20  # label permutations for the bias of the plug-in mutual information


# -- images ----------------------------------------------------------------------------------------


def images(generated: int, seed: int) -> list[tuple[str, bytes]]:
    """The photos as scikit-image ships them, then ``generated`` variations of them, in memory."""
    import skimage
    from PIL import Image, ImageEnhance

    data_dir = Path(skimage.data_dir)  # type: ignore[attr-defined]
    files = [(name, (data_dir / name).read_bytes()) for name in PHOTOS]
    sources = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in files]
    rng = random.Random(seed)
    out = list(files)
    for n in range(generated):
        im = rng.choice(sources)
        w, h = im.size
        cw, ch = max(16, int(w * rng.uniform(0.3, 1.0))), max(16, int(h * rng.uniform(0.3, 1.0)))
        x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = im.rotate(rng.uniform(-35, 35), Image.Resampling.BICUBIC, expand=rng.random() < 0.5)
        if rng.random() < 0.3:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            if rng.random() < 0.7:
                im = enhancer(im).enhance(rng.uniform(0.6, 1.4))
        scale = rng.randint(64, 800) / max(im.size)
        im = im.resize(
            (max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.Resampling.LANCZOS
        )
        buf = io.BytesIO()
        if rng.random() < 0.5:
            im.save(buf, "JPEG", quality=rng.randint(30, 95))
            out.append((f"generated-{n:03d}.jpg", buf.getvalue()))
        else:
            im.save(buf, "PNG", compress_level=rng.randint(1, 9))
            out.append((f"generated-{n:03d}.png", buf.getvalue()))
    return out


# -- the servers: bench/load.py's, one with padding off ----------------------------------------------


def server(work: Path, *, padded: bool) -> Server:
    """`enclave-infer serve` on CPU 1 with ``[padding] enabled = padded``; not yet listening."""
    config = f"[padding]\nenabled = {'true' if padded else 'false'}\n"
    started = Server(work, config=config, options=(), wait=False)
    assert started.config.padding.enabled is padded
    return started


# -- recording what the host sees ------------------------------------------------------------------


class Recorder:
    """An httpx handler around a real transport: the lengths of every POST /v1/ohttp's encapsulated
    request and response bodies, what the host (or anyone on the wire) sees of a classification."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.exchanges: list[tuple[int, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self.real.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/ohttp":
            self.exchanges.append((len(request.content), len(response.read())))
        return response


@dataclass
class Record:
    image: str
    top: int
    request_bytes: int
    response_bytes: int
    index: int  # the top class (labels repeat in the ImageNet list: the index is the class)
    label: str
    seconds: float


@dataclass
class Side:
    server: Server
    recorder: Recorder = field(default_factory=Recorder)
    records: list[Record] = field(default_factory=list)
    cpu_seconds: float = 0.0


def classify(side: Side, client: Any, name: str, image: bytes, top: int) -> Record:
    side.recorder.exchanges.clear()
    started = time.perf_counter()
    result = client.classify(image, top=top)
    seconds = time.perf_counter() - started
    if len(side.recorder.exchanges) != 1:
        raise SystemExit(f"{name}: {len(side.recorder.exchanges)} exchanges for one classification")
    (request_bytes, response_bytes), best = side.recorder.exchanges[0], result.results[0]
    return Record(name, top, request_bytes, response_bytes, best.index, best.label, seconds)


# -- what the lengths tell -------------------------------------------------------------------------


def guess_accuracy(xs: Sequence[Hashable], ys: Sequence[Hashable]) -> float:
    """Leave-one-out accuracy of guessing y as the most frequent y among the other samples with the
    same x (among all others if none has it); a tie counts as a uniform random pick among the tied."""
    by_x: dict[Hashable, Counter[Hashable]] = defaultdict(Counter)
    for x, y in zip(xs, ys, strict=True):
        by_x[x][y] += 1
    overall: Counter[Hashable] = Counter(ys)
    hits = 0.0
    for x, y in zip(xs, ys, strict=True):
        counts = by_x[x] - Counter({y: 1}) or overall - Counter({y: 1})
        best = max(counts.values())
        tied = [k for k, v in counts.items() if v == best]
        hits += (y in tied) / len(tied)
    return hits / len(ys)


def entropy(counts: Counter[Any]) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def mutual_information(xs: Sequence[Hashable], ys: Sequence[Hashable]) -> float:
    """Plug-in estimate in bits: H(X) + H(Y) − H(X, Y) of the empirical distribution."""
    return entropy(Counter(xs)) + entropy(Counter(ys)) - entropy(Counter(zip(xs, ys, strict=True)))


def leak(records: list[Record], seed: int) -> dict[str, Any]:
    lengths = [r.response_bytes for r in records]
    labels = [r.index for r in records]
    rng = random.Random(seed)
    shuffled = []
    for _ in range(SHUFFLES):
        permuted = labels[:]
        rng.shuffle(permuted)
        shuffled.append(mutual_information(lengths, permuted))
    return {
        "classifications": len(records),
        "distinct_labels": len(set(labels)),
        "distinct_response_lengths": len(set(lengths)),
        "response_length_min": min(lengths),
        "response_length_max": max(lengths),
        "guess_accuracy": guess_accuracy(lengths, labels),
        "baseline_accuracy": guess_accuracy([0] * len(labels), labels),
        "mutual_information_bits": mutual_information(lengths, labels),
        "mutual_information_shuffled_bits": statistics.fmean(shuffled),
        "label_entropy_bits": entropy(Counter(labels)),
    }


def knowing_labels(records: list[Record], labels: Sequence[str]) -> dict[str, Any]:
    """What an observer who also knows the model's label list (the manifest is no secret to the
    submitters) learns from an unpadded top=1 answer's length: the answer's JSON differs between
    classes only in the label, its index and the probability's digits, so the length leaves the
    classes whose label and index fit it for one of the few lengths a probability prints in. The
    guess (leave-one-out): the most frequent label of the other images with this length; if none has
    it, the most frequent among the other images of the classes that fit; else one of those."""

    def size(c: int) -> int:
        return len(json.dumps(labels[c])) + len(str(c))

    residuals = {r.response_bytes - size(r.index) for r in records}  # constant + len(probability)
    by_size: dict[int, set[int]] = defaultdict(set)
    for c in range(len(labels)):
        by_size[size(c)].add(c)
    overall: Counter[int] = Counter(r.index for r in records)
    same_length: dict[int, Counter[int]] = defaultdict(Counter)
    for r in records:
        same_length[r.response_bytes][r.index] += 1
    sizes, hits = [], 0.0
    for r in records:
        fits = set().union(*(by_size.get(r.response_bytes - k, set()) for k in residuals))
        sizes.append(len(fits))
        others = overall - Counter({r.index: 1})
        prior = same_length[r.response_bytes] - Counter({r.index: 1})
        prior = prior or Counter({c: n for c, n in others.items() if c in fits})
        if prior:
            best = max(prior.values())
            tied = [c for c, n in prior.items() if n == best]
            hits += (r.index in tied) / len(tied)
        else:
            hits += (r.index in fits) / len(fits)
    return {
        "classes": len(labels),
        "probability_length_spread": max(residuals) - min(residuals) + 1,
        "candidates_median": statistics.median(sizes),
        "candidates_min": min(sizes),
        "guess_accuracy": hits / len(records),
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run ---------------------------------------------------------------------------------------


def measure(model: Path, pictures: list[tuple[str, bytes]], work: Path) -> dict[str, Side]:
    from enclave_infer import Client

    sides: dict[str, Side] = {}
    try:
        for name in SIDES:
            sides[name] = Side(server(work / name, padded=name == "on"))
        for side in sides.values():
            side.server.wait_listening()
            side.server.provision(model, LABELS, "--mean", MEAN, "--std", STD)
        clients = {
            name: Client(
                side.server.url, side.server.constraint, transport=httpx.MockTransport(side.recorder)
            )
            for name, side in sides.items()
        }
        try:
            for name, client in clients.items():
                client.attest()
                assert client.attestation is not None
                assert client.attestation.config.padding.enabled is (name == "on")
                for _, warm in pictures[:3]:  # warm up: sessions, connections, caches
                    client.classify(warm)
            before = {name: side.server.cpu() for name, side in sides.items()}
            for i, (image_name, image) in enumerate(pictures):
                order = SIDES if i % 2 == 0 else SIDES[::-1]  # alternate who goes first
                for top in TOPS:
                    for name in order:
                        sides[name].records.append(
                            classify(sides[name], clients[name], image_name, image, top)
                        )
            for name, side in sides.items():
                side.cpu_seconds = side.server.cpu() - before[name]
        finally:
            for client in clients.values():
                client.close()
            for side in sides.values():
                side.recorder.real.close()
    finally:
        for side in sides.values():
            side.server.stop()
    return sides


def summarise(sides: dict[str, Side], seed: int, labels: Sequence[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {"images": len(sides["off"].records) // len(TOPS)}
    by = {
        (name, top): [r for r in side.records if r.top == top] for name, side in sides.items() for top in TOPS
    }
    disagree = sum(
        a.index != b.index for top in TOPS for a, b in zip(by["off", top], by["on", top], strict=True)
    )
    figures["label_disagreements"] = disagree
    for top in TOPS:
        figures[f"top{top}"] = {name: leak(by[name, top], seed) for name in SIDES}
        on_lengths = {r.response_bytes for r in by["on", top]}
        assert len(on_lengths) == 1, f"padding on, top={top}: response lengths {sorted(on_lengths)}"
        figures[f"top{top}"]["on"]["response_length"] = on_lengths.pop()
    off, on = by["off", 1], by["on", 1]
    figures["top1"]["off"]["knowing_labels"] = knowing_labels(off, labels)
    extra = [b.request_bytes - a.request_bytes for a, b in zip(off, on, strict=True)]
    percent = [100 * e / a.request_bytes for e, a in zip(extra, off, strict=True)]
    assert min(extra) >= 0
    figures["requests"] = {
        "distinct_lengths_off": len({r.request_bytes for r in off}),
        "distinct_lengths_on": len({r.request_bytes for r in on}),
        "overhead_mean_bytes": statistics.fmean(extra),
        "overhead_max_bytes": max(extra),
        "overhead_mean_percent": statistics.fmean(percent),
        "overhead_max_percent": max(percent),
    }
    wire = {
        name: sum(r.request_bytes + r.response_bytes for r in side.records) for name, side in sides.items()
    }
    responses = {name: sum(r.response_bytes for r in side.records) for name, side in sides.items()}
    figures["wire"] = {
        "bytes_off": wire["off"], "bytes_on": wire["on"], "ratio": wire["on"] / wire["off"],
        "response_bytes_off": responses["off"], "response_bytes_on": responses["on"],
    }  # fmt: skip
    figures["latency"] = {
        name: {
            "classifications": len(side.records),
            "p50_ms": statistics.median(r.seconds for r in side.records) * 1000,
            "p90_ms": percentile([r.seconds for r in side.records], 0.9) * 1000,
            "server_cpu_ms": side.cpu_seconds / len(side.records) * 1000,
        }
        for name, side in sides.items()
    }
    # the same image and top, one right after the other: the cost of padding without most noise
    paired = [
        (b.seconds - a.seconds) * 1000 for a, b in zip(sides["off"].records, sides["on"].records, strict=True)
    ]
    figures["latency"]["paired_difference_ms"] = {
        "median": statistics.median(paired),
        "mean": statistics.fmean(paired),
    }
    return figures


def report(f: dict[str, Any]) -> None:
    def row(what: str, off: str, on: str, note: str = "") -> None:
        print(f"{what:<44} {off:>16} {on:>16}  {note}")

    print(f"\n{f['images']} images, each classified with top=1 and top=5 on both servers"
          f" (top labels that differ between the servers: {f['label_disagreements']})\n")  # fmt: skip
    row("", "padding off", "padding on")
    for top in TOPS:
        off, on = f[f"top{top}"]["off"], f[f"top{top}"]["on"]
        row(f"top={top}: distinct top labels", str(off["distinct_labels"]), str(on["distinct_labels"]))
        row(f"top={top}: distinct response lengths", str(off["distinct_response_lengths"]),
            str(on["distinct_response_lengths"]))  # fmt: skip
        row(f"top={top}: response bytes", f"{off['response_length_min']}–{off['response_length_max']}",
            str(on["response_length"]))  # fmt: skip
        row(f"top={top}: top label guessed from length (LOO)", f"{off['guess_accuracy']:.1%}",
            f"{on['guess_accuracy']:.1%}", f"baseline (most frequent label) {off['baseline_accuracy']:.1%}")  # fmt: skip
        row(f"top={top}: I(length; label), bits", f"{off['mutual_information_bits']:.2f}",
            f"{on['mutual_information_bits']:.2f}",
            f"shuffled labels {off['mutual_information_shuffled_bits']:.2f}; H(label) {off['label_entropy_bits']:.2f}")  # fmt: skip
        if "knowing_labels" in off:
            k = off["knowing_labels"]
            row(f"top={top}: knowing the labels: classes fitting the length", f"{k['candidates_median']:g}",
                str(k["classes"]), f"median (min {k['candidates_min']}) of {k['classes']}")  # fmt: skip
            row(f"top={top}: knowing the labels: top label guessed (LOO)", f"{k['guess_accuracy']:.1%}",
                f"{on['baseline_accuracy']:.1%}", "padded: no class is ruled out, the baseline")  # fmt: skip
    q = f["requests"]
    row("distinct request lengths", str(q["distinct_lengths_off"]), str(q["distinct_lengths_on"]))
    row(
        "request padding, mean / max bytes", "", f"{q['overhead_mean_bytes']:.0f} / {q['overhead_max_bytes']}"
    )
    row(
        "request padding, mean / max %",
        "",
        f"{q['overhead_mean_percent']:.2f} / {q['overhead_max_percent']:.2f}",
    )
    w = f["wire"]
    row(
        "bytes on the wire (requests + responses)",
        f"{w['bytes_off']:,}",
        f"{w['bytes_on']:,}",
        f"×{w['ratio']:.4f}",
    )
    row("  of which responses", f"{w['response_bytes_off']:,}", f"{w['response_bytes_on']:,}")
    lat = f["latency"]
    row("latency p50 / p90, ms", f"{lat['off']['p50_ms']:.1f} / {lat['off']['p90_ms']:.1f}",
        f"{lat['on']['p50_ms']:.1f} / {lat['on']['p90_ms']:.1f}")  # fmt: skip
    d = lat["paired_difference_ms"]
    row("latency on − off, same image, median / mean ms", "", f"{d['median']:+.2f} / {d['mean']:+.2f}")
    row(
        "server CPU per request, ms",
        f"{lat['off']['server_cpu_ms']:.1f}",
        f"{lat['on']['server_cpu_ms']:.1f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--generated", type=int, default=300, help="images generated from the photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every figure here as well")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the servers have CPU 1
    started = time.perf_counter()
    pictures = images(args.generated, args.seed)
    print(f"{len(pictures)} images ({sum(len(p) for _, p in pictures) / 1e6:.1f} MB)"
          f" in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        sides = measure(args.model, pictures, Path(tmp))
    from enclave_infer.client._owner import read_labels

    figures = summarise(sides, args.seed, read_labels(LABELS, allow_duplicates=True))
    report(figures)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        figures["records"] = {
            name: [r.__dict__ for r in side.records] for name, side in sides.items()
        }  # every classification, for a second look
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
