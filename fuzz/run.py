"""``make fuzz``: every atheris target for a fixed number of inputs, then the host's HTTP surface.

    python fuzz/run.py [TARGET ...] [--runs N] [--jobs J] [--requests N]

Targets run two at a time (the machine has two cores), each from the seed corpus ``seeds.py`` writes
plus whatever earlier runs added, under ``build/fuzz/``. libFuzzer bounds each input's time
(``-timeout``) and the process's memory (``-rss_limit_mb``). One summary line per target; the exit
status is 1 when any target found something (its input is kept as ``build/fuzz/findings/<target>-*``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "build" / "fuzz"
sys.path.insert(0, str(HERE))

from seeds import TARGETS, write  # noqa: E402


@dataclass(frozen=True)
class Budget:
    runs: int = 20_000  # inputs; a few seconds to three minutes on one core (fuzz/README.md)
    max_len: int = 4096
    timeout: int = 10  # seconds per input
    rss_mb: int = 2048


BUDGETS = {
    "frames": Budget(runs=10_000, timeout=20),  # each input is several encrypted requests
    "evidence": Budget(max_len=16384),
    "snp": Budget(max_len=16384),
    "image": Budget(max_len=8192),
}


@dataclass
class Result:
    target: str
    inputs: int
    findings: list[str]
    seconds: float
    note: str = ""

    def line(self) -> str:
        status = "ok" if not self.findings else "FOUND " + ", ".join(self.findings)
        return (
            f"fuzz {self.target:<14} {self.inputs:>7} inputs  {len(self.findings)} crashes"
            f"  {self.seconds:7.1f} s  {status}{self.note}"
        )


def run_target(target: str, runs: int | None) -> Result:
    budget = BUDGETS.get(target, Budget())
    runs = runs or budget.runs
    corpus, logs, findings = OUT / "corpus" / target, OUT / "logs", OUT / "findings"
    tmp = OUT / "tmp" / target
    for folder in (logs, findings, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{target}-"
    before = {p for p in findings.iterdir() if p.name.startswith(prefix)}
    command = [
        sys.executable,
        str(HERE / f"fuzz_{target}.py"),
        str(corpus),
        f"-runs={runs}",
        f"-max_len={budget.max_len}",
        f"-timeout={budget.timeout}",
        f"-rss_limit_mb={budget.rss_mb}",
        f"-artifact_prefix={findings}/{target}-",
        "-print_final_stats=1",
    ]
    dictionary = OUT / "dict" / f"{target}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONHASHSEED": "0"}
    started = time.monotonic()
    log = logs / f"{target}.log"
    with log.open("wb") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False
        ).returncode
    seconds = time.monotonic() - started
    shutil.rmtree(tmp, ignore_errors=True)
    text = log.read_text(errors="replace")
    done = re.search(r"^Done (\d+) runs", text, re.M)
    executed = re.findall(r"^#(\d+)\s", text, re.M)
    inputs = int(done.group(1)) if done else int(executed[-1]) if executed else 0
    new = sorted(p.name for p in findings.iterdir() if p.name.startswith(prefix) and p not in before)
    if code != 0 and not new:
        new = [f"exit status {code} (see build/fuzz/logs/{target}.log)"]
    return Result(target, inputs, new, seconds)


def run_http(requests: int) -> Result:
    started = time.monotonic()
    log = OUT / "logs" / "http.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        code = subprocess.run(
            [sys.executable, str(HERE / "http_fuzz.py"), "--requests", str(requests)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False,
        ).returncode  # fmt: skip
    text = log.read_text(errors="replace")
    sent = re.search(r"^sent (\d+) requests", text, re.M)
    failures = re.findall(r"^FINDING: (.*)$", text, re.M)
    if code != 0 and not failures:
        failures = [f"exit status {code} (see build/fuzz/logs/http.log)"]
    return Result("http", int(sent.group(1)) if sent else 0, failures, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(TARGETS)}, http (default: all)")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("FUZZ_RUNS", "0")) or None,
                        help="inputs per target (default: each target's own, at least 10,000)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=int(os.environ.get("FUZZ_REQUESTS", "3000")))
    args = parser.parse_args()
    chosen = args.targets or [*TARGETS, "http"]
    unknown = sorted(set(chosen) - {*TARGETS, "http"})
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    write(OUT)
    started = time.monotonic()
    results: list[Result] = []
    atheris_targets = [t for t in chosen if t != "http"]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda t: run_target(t, args.runs), atheris_targets):
            print(result.line(), flush=True)
            results.append(result)
    if "http" in chosen:
        result = run_http(args.requests)
        print(result.line().replace(" inputs", " requests"), flush=True)
        results.append(result)
    found = [r for r in results if r.findings]
    total = time.monotonic() - started
    print(f"fuzz: {len(results)} targets, {sum(r.inputs for r in results)} inputs, "
          f"{sum(len(r.findings) for r in found)} findings, {total:.0f} s")  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
