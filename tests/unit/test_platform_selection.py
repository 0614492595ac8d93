"""Which platform the enclave runs on: the configured one, or what the machine offers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import enclave_infer.enclave.gramine as gramine
import enclave_infer.enclave.tsm as tsm
import enclave_infer.enclave.vtpm as vtpm
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.__main__ import select_platform
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.errors import AttestationError

CONFIG = EnclaveConfig(owner_public_key=bytes(32))


def test_auto_without_a_tee_is_simulation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gramine, "available", lambda root=tmp_path / "none": False)
    monkeypatch.setattr(tsm, "available", lambda root=tmp_path / "none": False)
    monkeypatch.setattr(vtpm, "available", lambda device=tmp_path / "none": False)
    assert isinstance(select_platform("auto", CONFIG), SimulationPlatform)
    assert isinstance(select_platform("simulation", CONFIG), SimulationPlatform)


def test_a_configured_tee_that_is_missing_fails_loudly() -> None:
    if gramine.available() or tsm.available() or vtpm.DEFAULT_DEVICE.exists():
        pytest.skip("this machine has a TEE interface or a TPM")
    with pytest.raises(AttestationError):
        select_platform("gramine-sgx", CONFIG)
    with pytest.raises(AttestationError):
        select_platform("tsm", CONFIG)
    with pytest.raises(AttestationError):
        select_platform("vtpm", CONFIG)


def test_auto_prefers_gramine_then_tsm(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[str] = []
    monkeypatch.setattr(gramine, "available", lambda root=None: True)
    monkeypatch.setattr(gramine, "GramineSgxPlatform", lambda **kw: chosen.append(f"gramine {kw}") or "g")
    monkeypatch.setattr(tsm, "available", lambda root=None: True)
    monkeypatch.setattr(tsm, "ConfigfsTsmPlatform", lambda: chosen.append("tsm") or "t")
    assert select_platform("auto", CONFIG) == "g"
    assert chosen == ["gramine {'sealing_policy': 'mrenclave'}"]
    monkeypatch.setattr(gramine, "available", lambda root=None: False)
    assert select_platform("auto", CONFIG) == "t"


def test_auto_takes_a_tpm_with_a_boot_log_after_the_tees(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A TPM counts only where the service may use /dev/tpmrm0 and the boot left its event log."""
    chosen: list[tuple[Path, Path]] = []
    device, log = tmp_path / "tpmrm0", tmp_path / "tpm-eventlog"
    available, find_event_log = vtpm.available, vtpm.find_event_log  # the real ones, on these paths
    monkeypatch.setattr(vtpm, "available", lambda: available(device, (log,)))
    monkeypatch.setattr(vtpm, "find_event_log", lambda candidates=(log,): find_event_log(candidates))
    monkeypatch.setattr(vtpm, "DEFAULT_DEVICE", device)
    monkeypatch.setattr(
        vtpm, "VtpmPlatform", lambda device, event_log: chosen.append((device, event_log)) or "v"
    )
    monkeypatch.setattr(gramine, "available", lambda root=None: False)
    monkeypatch.setattr(tsm, "available", lambda root=None: True)
    monkeypatch.setattr(tsm, "ConfigfsTsmPlatform", lambda: "t")
    device.write_bytes(b"")
    log.write_bytes(b"log")
    assert select_platform("auto", CONFIG) == "t"  # configfs-tsm first
    monkeypatch.setattr(tsm, "available", lambda root=None: False)
    assert select_platform("auto", CONFIG) == "v"
    assert select_platform("vtpm", CONFIG) == "v"
    assert chosen == [(device, log), (device, log)]
    log.unlink()
    assert isinstance(select_platform("auto", CONFIG), SimulationPlatform)  # a TPM, but no boot log
    log.write_bytes(b"log")
    device.chmod(0o400)
    if not os.access(device, os.W_OK):  # root may write anyway
        assert isinstance(select_platform("auto", CONFIG), SimulationPlatform)  # read-only for us
    device.unlink()
    assert isinstance(select_platform("auto", CONFIG), SimulationPlatform)  # no TPM
