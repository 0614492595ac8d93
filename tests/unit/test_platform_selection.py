"""Which platform the enclave runs on: the configured one, or what the machine offers."""

from __future__ import annotations

from pathlib import Path

import pytest

import enclave_infer.enclave.gramine as gramine
import enclave_infer.enclave.tsm as tsm
from enclave_infer.config import EnclaveConfig
from enclave_infer.enclave.__main__ import select_platform
from enclave_infer.enclave.platform import SimulationPlatform
from enclave_infer.errors import AttestationError

CONFIG = EnclaveConfig(owner_public_key=bytes(32))


def test_auto_without_a_tee_is_simulation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gramine, "available", lambda root=tmp_path / "none": False)
    monkeypatch.setattr(tsm, "available", lambda root=tmp_path / "none": False)
    assert isinstance(select_platform("auto", CONFIG), SimulationPlatform)
    assert isinstance(select_platform("simulation", CONFIG), SimulationPlatform)


def test_a_configured_tee_that_is_missing_fails_loudly() -> None:
    if gramine.available() or tsm.available():
        pytest.skip("this machine has a TEE interface")
    with pytest.raises(AttestationError):
        select_platform("gramine-sgx", CONFIG)
    with pytest.raises(AttestationError):
        select_platform("tsm", CONFIG)


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
