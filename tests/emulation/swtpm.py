"""A real swtpm process (a TPM 2.0 emulator, libtpms) on TCP loopback, and tpm2-tools aimed at it.

TEST-ONLY. Nothing is emulated by this module: it starts Debian's ``swtpm`` (package swtpm) as

    swtpm socket --tpm2 --server type=tcp,port=P --ctrl type=tcp,port=C --tpmstate dir=DIR
                 --flags not-need-init,startup-clear

on 127.0.0.1, a fresh TPM (new endorsement seed, PCRs zero) per :func:`start_swtpm`, which the
product's TPM client (:class:`enclave_infer.enclave.vtpm.TcpTpm`) and tpm2-tools (package
tpm2-tools, TCTI ``swtpm:host=127.0.0.1,port=P``) talk to. swtpm serves one connection at a time,
and it has no resource manager: whoever loads a transient object flushes it (tpm2-tools leave theirs
loaded, so :meth:`Swtpm.tpm2` flushes every transient object after each tool).
Tests that need swtpm or tpm2-tools skip, saying which package is missing, when it is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_infer.attestation.tpm import TpmAlg
from enclave_infer.enclave.vtpm import TcpTpm, TpmClient, open_tpm

__all__ = ["Swtpm", "need_swtpm", "need_tpm2_tools", "start_swtpm", "tpm2_yaml"]

START_TIMEOUT = 10.0  # seconds for swtpm to listen
TOOL_TIMEOUT = 60.0


def need_swtpm() -> None:
    """Skip the calling test when swtpm is not installed."""
    if shutil.which("swtpm") is None:
        pytest.skip("needs swtpm (Debian packages swtpm, swtpm-tools): a real TPM 2.0 emulator")


def need_tpm2_tools() -> None:
    """Skip the calling test when tpm2-tools (with the swtpm TCTI) are not installed."""
    if shutil.which("tpm2_checkquote") is None:
        pytest.skip(
            "needs tpm2-tools (Debian package tpm2-tools): an independent TPM 2.0 client and verifier"
        )


def _free_port() -> int:
    """A port free now whose successor is free too (or as far as one can tell without holding it)."""
    while True:
        with socket.socket() as s, socket.socket() as t:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port < 65535:
                try:
                    t.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


@dataclass
class Swtpm:
    """One running swtpm: its TCP data port, its state directory and its process."""

    process: subprocess.Popen[bytes]
    port: int
    ctrl_port: int
    state: Path
    log: Path

    @property
    def address(self) -> TcpTpm:
        return TcpTpm("127.0.0.1", self.port)

    @contextmanager
    def client(self) -> Iterator[TpmClient]:
        """The product's TPM client on its own connection (closed afterwards: swtpm serves one)."""
        with open_tpm(self.address) as client:
            yield client

    def extend(self, index: int, sha256: bytes) -> None:
        """TPM2_PCR_Extend of the SHA-256 bank, as the firmware does at boot."""
        with self.client() as client:
            client.pcr_extend(index, {TpmAlg.SHA256: sha256})

    def extend_all(self, events: Iterator[tuple[int, bytes]] | list[tuple[int, bytes]]) -> None:
        with self.client() as client:
            for index, digest in events:
                client.pcr_extend(index, {TpmAlg.SHA256: digest})

    @property
    def tcti(self) -> Mapping[str, str]:
        return {"TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={self.port}"}

    def tpm2(self, *args: str | Path, cwd: Path) -> str:
        """Run one tpm2-tools command against this TPM; its standard output. Fails the test with the
        tool's error output if it fails. Transient objects are flushed afterwards."""
        env = {**os.environ, **self.tcti}
        done = subprocess.run(
            [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT
        )
        subprocess.run(
            ["tpm2_flushcontext", "-t"], cwd=cwd, env=env, capture_output=True, timeout=TOOL_TIMEOUT
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed:\n{done.stderr}")
        return done.stdout

    def boot(self, event_log: Path, cwd: Path) -> dict[int, bytes]:  # needs tpm2-tools
        """Play the firmware's part: extend the SHA-256 PCRs with the digests of every measured event
        of ``event_log`` (a TCG crypto-agile log), as tpm2_eventlog reads it; the SHA-256 PCR values
        tpm2_eventlog computes for the log, which the TPM's must now be (PCRs the log does not touch:
        zero, as swtpm starts them)."""
        replayed = tpm2_yaml(self.tpm2("tpm2_eventlog", event_log, cwd=cwd))
        self.extend_all(
            [
                (int(event["PCRIndex"]), bytes.fromhex(digest["Digest"]))
                for event in replayed["events"]
                if event["EventType"] != "EV_NO_ACTION"
                for digest in event["Digests"]
                if digest["AlgorithmId"] == "sha256"
            ]
        )
        values = {i: bytes(32) for i in range(16)}
        values.update(
            {int(i): bytes.fromhex(v.removeprefix("0x")) for i, v in replayed["pcrs"]["sha256"].items()}
        )
        return values

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def tpm2_yaml(output: str) -> Any:
    """tpm2-tools' YAML output, every scalar a string (hex digits must not turn into numbers)."""
    return yaml.load(output, Loader=yaml.BaseLoader)  # BaseLoader: only str, list and dict


def start_swtpm(state: Path) -> Swtpm:
    """A fresh swtpm with its state in ``state`` (created), listening on loopback."""
    need_swtpm()
    state.mkdir(parents=True, exist_ok=True)
    log = state / "swtpm.log"
    for _ in range(5):  # a port taken between choosing and binding: choose again
        # the swtpm TCTI of tpm2-tools finds the control channel at the data port + 1
        port = _free_port()
        ctrl = port + 1
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["swtpm", "socket", "--tpm2",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                 "--tpmstate", f"dir={state}",
                 "--flags", "not-need-init,startup-clear"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        swtpm = Swtpm(process, port, ctrl, state, log)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ctrl), timeout=1).close()
                return swtpm
            except OSError:
                time.sleep(0.02)
        swtpm.stop()
    raise AssertionError(f"swtpm did not start:\n{log.read_text(errors='replace')}")
