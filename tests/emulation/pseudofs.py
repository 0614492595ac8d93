"""Fake Gramine ``/dev/attestation`` and configfs-tsm trees that act as the kernel, built from FIFOs.

TEST-ONLY. Gramine's ``quote`` and configfs-tsm's ``outblob`` are generated when read. Here they are
named pipes served by a "fake kernel" thread: it waits (polling, bounded) until the provider opens
the pipe for reading, then reads what the provider wrote (``user_report_data`` / ``inblob``), asks
the test's ``make_quote`` / ``make_outblob`` for the answer over that report data, writes it and
closes. What the answer is (a structural fake, or a quote minted by :mod:`tests.emulation.dcap`
that verifies under the emulated root) is the test's choice.

Every provider call runs through :func:`bounded`, and every fake thread has a deadline, so that a
provider that blocks fails its test instead of hanging the suite.

The provider may run in this process or in another one (an enclave process started by an end-to-end
test): the trees are plain directories, FIFOs and files, so the fake kernel's threads serve a
reader in any process. Only configfs-tsm's ``mkdir`` needs help across processes, since there the
kernel populates an entry as it creates it: :class:`FakeTsm` without a ``monkeypatch`` watches its
root for entries another process makes, populates each one and writes its ``provider`` attribute
last, and that process's ``mkdir`` returns once ``provider`` is there
(``tests/emulation/run_enclave.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from enclave_infer.enclave import tsm

__all__ = ["TIMEOUT", "FakeGramine", "FakeTsm", "bounded", "open_writer", "unblock", "write_all"]

T = TypeVar("T")
TIMEOUT = 10.0  # seconds; every provider call and fake thread is bounded by this
POLL = 0.001  # seconds between looks for a reader, or for a new configfs-tsm entry


def bounded(fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Run ``fn`` in a thread; fail the test if it has not returned within ``timeout`` seconds."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"provider call did not finish within {timeout} s (blocked on a pseudo-file?)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def open_writer(fifo: Path, stop: threading.Event, deadline: float) -> int | None:
    """Open ``fifo`` for writing once a reader has opened it; None if stopped or past the deadline."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if stop.is_set() or time.monotonic() > deadline:
                return None
            time.sleep(POLL)
            continue
        os.set_blocking(fd, True)
        return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unblock(fifo: Path) -> None:
    """Release a reader stuck opening ``fifo`` (it then reads EOF)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


class FakeGramine:
    """A /dev/attestation tree; a thread serves ``quote`` from whatever ``user_report_data`` holds,
    for ``lifetime`` seconds (an end-to-end test's enclave asks for quotes for longer than a unit
    test's provider)."""

    def __init__(
        self,
        root: Path,
        *,
        kind: str = "dcap",
        make_quote: Callable[[int, bytes], bytes],  # (request number, report data) -> quote
        lifetime: float = TIMEOUT,
    ) -> None:
        self.root = root
        self.make_quote = make_quote
        self.lifetime = lifetime
        self.served = 0
        self.stop = threading.Event()
        root.mkdir()
        (root / "attestation_type").write_text(kind)  # Gramine writes no newline
        (root / "user_report_data").write_bytes(b"")
        (root / "keys").mkdir()
        (root / "keys" / "_sgx_mrenclave").write_bytes(b"E" * 16)
        (root / "keys" / "_sgx_mrsigner").write_bytes(b"S" * 16)
        self.thread: threading.Thread | None = None
        if kind != "none":  # Gramine adds no quote file without remote attestation
            os.mkfifo(root / "quote")
            self.thread = threading.Thread(target=self._serve, daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        fifo = self.root / "quote"
        while (fd := open_writer(fifo, self.stop, deadline)) is not None:
            # A fresh pipe for the next request: it must not reach this request's reader.
            spare = self.root / ".quote.next"
            os.mkfifo(spare)
            os.replace(spare, fifo)
            try:
                report_data = (self.root / "user_report_data").read_bytes()
                write_all(fd, self.make_quote(self.served, report_data))
            finally:
                self.served += 1
                os.close(fd)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(TIMEOUT)
            assert not self.thread.is_alive(), "fake Gramine thread did not stop"
            unblock(self.root / "quote")


class FakeTsm:
    """A configfs-tsm report directory; creating an entry populates it as the kernel would.

    With ``monkeypatch``, the provider runs in this process and its ``mkdir``/``rmdir`` hooks
    (``tsm._mkdir``, ``tsm._rmdir``) are this object's. Without, another process makes the entries:
    a thread watches ``root`` for ``lifetime`` seconds and populates each new one.
    """

    def __init__(
        self,
        root: Path,
        monkeypatch: pytest.MonkeyPatch | None,
        *,
        provider: str,
        make_outblob: Callable[[bytes], bytes],
        auxblob: bytes | None = None,
        bumps: Callable[[int], int] = lambda i: 1,
        outblob: str = "fifo",  # "fifo", "eio" (a read that fails with EIO), "empty"
        mkdir_errno: int | None = None,
        lifetime: float = TIMEOUT,
    ) -> None:
        self.root = root
        self.provider = provider
        self.make_outblob = make_outblob
        self.auxblob = auxblob
        self.bumps = bumps
        self.outblob = outblob
        self.mkdir_errno = mkdir_errno
        self.created: list[str] = []
        self.removed: list[str] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        root.mkdir(parents=True)
        if monkeypatch is not None:
            monkeypatch.setattr(tsm, "_mkdir", self._mkdir)
            monkeypatch.setattr(tsm, "_rmdir", self._rmdir)
        else:
            if mkdir_errno is not None:
                raise ValueError("mkdir_errno needs the provider in this process (give monkeypatch)")
            watcher = threading.Thread(target=self._watch, args=(time.monotonic() + lifetime,), daemon=True)
            self.threads.append(watcher)
            watcher.start()

    def _mkdir(self, path: Path) -> None:
        if self.mkdir_errno is not None:  # e.g. ENXIO: no TSM provider registered
            raise OSError(self.mkdir_errno, os.strerror(self.mkdir_errno), str(path))
        os.mkdir(path)
        self.populate(path)

    def populate(self, path: Path) -> None:
        """What the kernel puts in a new entry; ``provider`` last, and atomically, so that a process
        waiting for it sees a complete entry."""
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)
        if self.outblob == "eio":
            # Reading /proc/self/mem at offset 0 (never mapped) fails in read() with EIO: a real
            # kernel EIO after a successful open, which is how a failed TSM request looks.
            (path / "outblob").symlink_to("/proc/self/mem")
        else:
            os.mkfifo(path / "outblob")
            thread = threading.Thread(target=self._serve, args=(path, len(self.created)), daemon=True)
            self.threads.append(thread)
            thread.start()
        self.created.append(path.name)
        (path / ".provider").write_text(self.provider + "\n")
        os.replace(path / ".provider", path / "provider")

    def _watch(self, deadline: float) -> None:
        """Populate the entries another process creates; note the ones it removes."""
        live: set[str] = set()
        while not self.stop.is_set() and time.monotonic() < deadline:
            names = {name for name in os.listdir(self.root) if not name.startswith(".")}
            for name in sorted(names - live):
                with contextlib.suppress(FileNotFoundError):  # removed already (its creator gave up)
                    self.populate(self.root / name)
            self.removed.extend(sorted(live - names))
            live = names
            time.sleep(POLL)

    def _serve(self, entry: Path, index: int) -> None:
        try:
            fd = open_writer(entry / "outblob", self.stop, time.monotonic() + TIMEOUT)
        except FileNotFoundError:  # the entry was removed before anyone read outblob
            return
        if fd is None:
            return
        try:
            generation = int((entry / "generation").read_text())
            (entry / "generation").write_text(f"{generation + self.bumps(index)}\n")
            if self.outblob != "empty":
                write_all(fd, self.make_outblob((entry / "inblob").read_bytes()))
        finally:
            os.close(fd)

    def _rmdir(self, path: Path) -> None:
        shutil.rmtree(path)  # configfs removes an entry's attributes with it
        self.removed.append(path.name)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "fake kernel thread did not stop"

    def assert_clean(self) -> None:
        assert self.removed == self.created
        assert list(self.root.iterdir()) == []
