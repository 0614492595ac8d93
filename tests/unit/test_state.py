"""The enclave's trusted state moves forward only by its checked transitions (enclave/state.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave_infer.cluster.keyrelease import ClusterSecrets, TcbFloor
from enclave_infer.cluster.storage import ClusterStorage, model_file_name, version_of
from enclave_infer.enclave.state import (
    AlreadyJoined,
    OtherCluster,
    TcbBelowFloor,
    TransitionRefused,
    TrustedState,
    VersionNotNewer,
)
from enclave_infer.protocol import ohttp


@dataclass(frozen=True)
class Model:
    version: int


NONE = TcbFloor()  # a platform that shows no TCB (simulation)


def cluster(floor: int = 0) -> ClusterSecrets:
    return ClusterSecrets.found(ohttp.GatewayKey.generate(1)).with_floor(floor)


def test_a_version_not_above_the_served_one_is_refused_and_changes_nothing() -> None:
    state: TrustedState[Model] = TrustedState()
    assert state.install(Model(2), upload=True) is None
    for version in (1, 2):
        with pytest.raises(VersionNotNewer):
            state.check_newer(version, upload=True)
        with pytest.raises(VersionNotNewer):
            state.install(Model(version), upload=False)
    assert state.model == Model(2)
    assert state.install(Model(3), upload=True) == Model(2)
    assert (state.model, state.floor) == (Model(3), 3)


def test_the_floor_only_rises_and_ends_a_model_below_it() -> None:
    state: TrustedState[Model] = TrustedState()
    state.join(cluster(), NONE)
    state.install(Model(2), upload=True)
    assert state.raise_floor(1) is None and state.floor == 2  # lower: nothing changes
    assert state.raise_floor(5) == Model(2)  # the served model is below it: no longer served
    assert (state.model, state.floor) == (None, 5)
    assert state.raise_floor(4) is None and state.floor == 5


def test_in_a_cluster_an_upload_must_exceed_the_floor_and_a_stored_file_reach_it() -> None:
    state: TrustedState[Model] = TrustedState()
    state.join(cluster(floor=3), NONE)
    with pytest.raises(VersionNotNewer, match="a member of the cluster holds"):
        state.check_newer(3, upload=True)  # a member holds version 3: a new upload must be newer
    state.check_newer(3, upload=False)  # the cluster's own file of version 3 may be loaded
    with pytest.raises(VersionNotNewer):
        state.install(Model(2), upload=False)
    alone: TrustedState[Model] = TrustedState()
    alone.raise_floor(3)
    alone.check_newer(1, upload=True)  # the floor is a cluster's: an enclave alone has none


def test_joining_is_one_step_and_happens_once() -> None:
    state: TrustedState[Model] = TrustedState()
    first = cluster(floor=4)
    state.join(first, NONE)
    assert (state.cluster, state.floor) == (first, 4)  # secrets and floor together
    for again in (first, cluster()):
        with pytest.raises(AlreadyJoined):
            state.join(again, NONE)
    assert state.cluster is first


def test_a_refresh_takes_the_floor_of_its_own_cluster_only() -> None:
    state: TrustedState[Model] = TrustedState()
    with pytest.raises(TransitionRefused):
        state.refresh(cluster(floor=2), NONE)  # not a member yet
    own = cluster()
    state.join(own, NONE)
    state.install(Model(1), upload=True)
    with pytest.raises(OtherCluster):
        state.refresh(cluster(floor=9), NONE)
    assert (state.model, state.floor) == (Model(1), 1)
    assert state.refresh(own.with_floor(2), NONE) == Model(1)
    assert (state.model, state.floor, state.cluster) == (None, 2, own)


def snp(bl: int, ucode: int) -> TcbFloor:
    return TcbFloor(snp=(bl, 0, 8, ucode, 0))


def test_the_tcb_floor_only_rises_and_own_evidence_below_it_is_refused() -> None:
    state: TrustedState[Model] = TrustedState()
    with pytest.raises(TransitionRefused):
        state.raise_tcb(snp(3, 115))  # not a member yet
    own = ClusterSecrets.found(ohttp.GatewayKey.generate(1), snp(3, 115))
    with pytest.raises(TcbBelowFloor, match="microcode 114 < 115"):
        state.join(own, snp(3, 114))  # its own platform below the cluster's floor: not joined
    assert state.cluster is None
    state.join(own, snp(4, 115))  # a newer boot loader of its own raises the floor
    assert state.tcb_floor == snp(4, 115)
    # a release whose floor is lower, or higher in one component only, never lowers it
    state.refresh(own.with_tcb(snp(1, 120)), snp(4, 120))
    assert state.tcb_floor == snp(4, 120)
    state.refresh(own, snp(4, 120))  # the cluster's first floor, from a member that never learned
    assert state.tcb_floor == snp(4, 120)
    # own evidence below the floor (its host lowered REPORTED_TCB): refused, nothing changes
    for lowered in (snp(4, 119), snp(3, 130)):
        with pytest.raises(TcbBelowFloor):
            state.raise_tcb(lowered)
        with pytest.raises(TcbBelowFloor):
            state.refresh(own.with_floor(7), lowered)
        assert (state.tcb_floor, state.floor) == (snp(4, 120), 0)
    assert state.raise_tcb(snp(5, 121)) == snp(5, 121)
    dcap = TcbFloor(18, 17)
    assert dcap.merge(TcbFloor(17, 18)) == TcbFloor(18, 18)
    assert dcap.shortfall(TcbFloor(17, 17)) == ["the TCB info's TCB evaluation data number 17 < 18"]


def test_the_cluster_storage_names_one_file_per_version() -> None:
    assert model_file_name(12) == "model-v12.sealed" and version_of("model-v12.sealed") == 12
    for name in (
        "model-v0.sealed",
        "model-v012.sealed",
        "model-v1.sealed.partial",
        "model.sealed",
        "model-v1e3.sealed",
    ):
        assert version_of(name) is None, name
    with pytest.raises(ValueError):
        model_file_name(0)


def test_the_cluster_storage_offers_newer_versions_at_or_above_the_floor_newest_first(tmp_path: Path) -> None:
    storage = ClusterStorage(tmp_path)
    assert list(storage.candidates([1, 2, 3, 4, 5], current=2, floor=4)) == [5, 4]
    assert list(storage.candidates([1, 2, 3, 4, 5], current=2, floor=0)) == [5, 4, 3]


def test_the_cluster_storage_opens_a_failed_file_again_only_once_it_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = ClusterStorage(tmp_path)
    path = storage.path(5)
    path.write_bytes(b"not a model")
    opened = storage.open(5)
    assert opened is not None and opened[0].read() == b"not a model"  # open at its start
    opened[0].close()
    storage.failed(5, opened[1])
    assert storage.open(5) is None  # the same state: not tried again
    path.write_bytes(b"not a model either")
    again = storage.open(5)
    assert again is not None and again[1] != opened[1]
    again[0].close()
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open: refused without a read, then remembered
    assert storage.open(5) is None and storage.open(5) is None
    assert caplog.text.count("not a regular file") == 1
    assert list(storage.candidates([], current=0, floor=0)) == []  # a listing without it forgets it
