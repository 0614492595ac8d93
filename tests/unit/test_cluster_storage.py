"""A file the host puts in the cluster's shared folder squats no version: a member tries a file that
failed again once it changes, and the owner's upload replaces a file that does not open under the
cluster's key. Real enclaves in this process (simulation), their hosts' frames carried by hand."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from enclave_infer.cluster.storage import model_file_name, model_files
from enclave_infer.enclave.models import ModelError
from enclave_infer.enclave.server import Enclave
from enclave_infer.protocol.api import Problem
from enclave_infer.protocol.framing import FrameType
from tests.unit.test_keyrelease import OWNER, ask, enclave, join, status
from tests.unit.test_sealing import provision

V2 = model_file_name(2)


def cluster(tmp_path: Path) -> tuple[Enclave, Enclave]:
    """Two members serving version 1: the founder, and one that joined from it."""
    first, second = enclave(tmp_path, "a"), enclave(tmp_path, "b")
    assert ask(first, FrameType.CLUSTER_FOUND)[0] is FrameType.CLUSTER_FOUNDED
    provision(first.store, OWNER, 1)
    assert join(second, first)[0] is FrameType.CLUSTER_JOINED
    assert status(second).model_version == 1
    return first, second


def other_clusters_file(tmp_path: Path) -> bytes:
    """A genuine version 2, sealed under the key of another cluster (same code, same owner)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = enclave(elsewhere, "x")
    ask(other, FrameType.CLUSTER_FOUND)
    provision(other.store, OWNER, 2)
    return (elsewhere / "shared" / V2).read_bytes()


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if V2 in r.getMessage() and r.levelno >= logging.WARNING]


def test_a_member_tries_a_failed_file_again_once_it_changes_and_only_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = cluster(tmp_path)
    provision(first.store, OWNER, 2)  # the genuine version 2, which the host keeps from the second
    path = tmp_path / "shared" / V2
    genuine = path.read_bytes()
    path.unlink()
    secret = second.cluster.sealing_key.hex() if second.cluster else ""
    with caplog.at_level(logging.INFO, logger="enclave_infer.enclave"):
        # garbage under version 2's name: refused with one log line, however often the host asks
        path.write_bytes(os.urandom(4096))
        for _ in range(3):
            assert status(second).model_version == 1
        assert len(failures(caplog)) == 1
        # the genuine file's first part (a copy cut short): the same beginning, another size
        path.write_bytes(genuine[: len(genuine) // 2])
        for _ in range(3):
            assert status(second).model_version == 1
        assert len(failures(caplog)) == 2
        # the genuine file, renamed into place under the same name: served without a restart
        staged = path.with_name("staged")
        staged.write_bytes(genuine)
        os.replace(staged, path)
        assert status(second).model_version == 2
    assert len(failures(caplog)) == 2
    assert secret and secret not in caplog.text  # no key bytes, no file bytes in the log
    assert genuine[:64].hex() not in caplog.text


@pytest.mark.parametrize("squatter", ["random bytes", "a truncated copy", "another cluster's v2"])
def test_the_owners_upload_replaces_a_file_that_does_not_open_under_the_clusters_key(
    tmp_path: Path, squatter: str
) -> None:
    first, second = cluster(tmp_path)
    path = tmp_path / "shared" / V2
    if squatter == "random bytes":
        squat = os.urandom(10_000)
    elif squatter == "a truncated copy":  # a genuine file's header, an upload cut short
        provision(first.store, OWNER, 2)
        squat = path.read_bytes()[:-1]
        path.unlink()
        first, second = second, first  # the upload goes to the member that has not loaded it
    else:
        squat = other_clusters_file(tmp_path)
    path.write_bytes(squat)
    assert status(second).model_version in (1, 2)
    provision(first.store, OWNER, 2)  # accepted: the file was not the cluster's
    assert first.store.current is not None and first.store.current.version == 2
    assert path.read_bytes() != squat
    assert status(second).model_version == 2
    third = enclave(tmp_path, "c")  # a member that starts now loads the upload's file
    assert join(third, first)[0] is FrameType.CLUSTER_JOINED
    assert status(third).model_version == 2
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [model_file_name(1), V2]


def test_a_genuine_file_refuses_a_second_upload_of_its_version(tmp_path: Path) -> None:
    first, second = cluster(tmp_path)
    provision(first.store, OWNER, 2)
    path = tmp_path / "shared" / V2
    genuine = path.read_bytes()
    # the second has not loaded version 2 (its host never said reload): its state would take it
    with pytest.raises(ModelError) as refused:
        provision(second.store, OWNER, 2)
    assert str(refused.value) == "model version 2 is already in the cluster's storage"
    assert refused.value.problem is Problem.VERSION_NOT_NEWER
    assert path.read_bytes() == genuine
    assert second.store.current is not None and second.store.current.version == 1
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [model_file_name(1), V2]


def test_the_host_sees_a_file_replaced_under_the_same_name(tmp_path: Path) -> None:
    """What a host watches (``model_files``) changes when a file is replaced, not only when a name
    comes or goes: so it tells its member to reload."""
    path = tmp_path / V2
    path.write_bytes(b"x" * 100)
    before = model_files(tmp_path)
    staged = tmp_path / "staged"
    staged.write_bytes(b"y" * 200)
    os.replace(staged, path)
    assert model_files(tmp_path) != before
    assert model_files(tmp_path) == model_files(tmp_path)
