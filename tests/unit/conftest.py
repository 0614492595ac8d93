"""Fixtures shared by unit tests: the fake Gramine and configfs-tsm trees (tests.emulation.pseudofs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.emulation.pseudofs import FakeGramine, FakeTsm


@pytest.fixture
def fake_gramine(tmp_path: Path) -> Iterator[Callable[..., FakeGramine]]:
    """Build a fake ``/dev/attestation`` under ``tmp_path`` (give ``make_quote``); closed after the test."""
    fakes: list[FakeGramine] = []

    def make(**kwargs: object) -> FakeGramine:
        fake = FakeGramine(tmp_path / "attestation", **kwargs)  # type: ignore[arg-type]
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()


@pytest.fixture
def fake_tsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeTsm]]:
    """Build a fake configfs-tsm report directory under ``tmp_path``; its threads end after the test."""
    fakes: list[FakeTsm] = []

    def make(**kwargs: object) -> FakeTsm:
        fake = FakeTsm(tmp_path / "tsm" / "report", monkeypatch, **kwargs)  # type: ignore[arg-type]
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()
