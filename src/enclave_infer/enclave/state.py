"""The enclave's trusted state: the model it serves, the version floor, the cluster it belongs to.

Trusted code, no I/O (python-tuf's ``TrustedMetadataSet``): the state moves forward only through the
methods below, each of which checks its transition and raises :class:`TransitionRefused` (and changes
nothing) when it is not allowed. The sealed store (:mod:`enclave_infer.enclave.models`) does the
reading and writing and asks this object before anything goes live; the classifier reads the served
model from it; the server joins the cluster through it.

- The served model's version only rises (:meth:`TrustedState.check_newer`, :meth:`install`).
- The floor only rises (:meth:`raise_floor`); in a cluster no version below it is served, and an
  upload must exceed it (a member of the cluster holds that version).
- An enclave joins a cluster once (:meth:`join`), in one step that sets the cluster's secrets (its
  id, OHTTP key and sealing key) and its floor together; later releases only raise the floor, and
  only if they come from the same cluster (:meth:`refresh`).
- The cluster's TCB floor (:class:`~enclave_infer.cluster.keyrelease.TcbFloor`) only rises: a
  release's floor merges in component by component, and so does the enclave's own platform each
  time it verifies its own evidence (:meth:`raise_tcb`). Own evidence below the floor (its host
  handed it older collateral, or lowered its SEV-SNP REPORTED_TCB) is refused with
  :class:`TcbBelowFloor`: the floor is never lowered to it, and nothing else changes either.
"""

from __future__ import annotations

import hmac
import threading
from typing import Generic, Protocol, TypeVar

from enclave_infer.cluster.keyrelease import ClusterSecrets, TcbFloor
from enclave_infer.errors import EnclaveInferError

__all__ = [
    "AlreadyJoined",
    "OtherCluster",
    "TcbBelowFloor",
    "TransitionRefused",
    "TrustedState",
    "VersionNotNewer",
]


class TransitionRefused(EnclaveInferError):
    """A change of the trusted state that is not allowed; the state is unchanged."""


class VersionNotNewer(TransitionRefused):
    """A model version at or below the served one, or below the cluster's floor."""


class AlreadyJoined(TransitionRefused):
    """The enclave is a member of a cluster already: its keys would change under its clients."""


class OtherCluster(TransitionRefused):
    """A release from a member of another cluster than this enclave's."""


class TcbBelowFloor(TransitionRefused):
    """The enclave's own platform, as its evidence shows it now, is below the cluster's TCB floor:
    taking it would lower the floor."""


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


M = TypeVar("M", bound=Versioned)


class TrustedState(Generic[M]):
    """``M``: the served model (anything with a ``version``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: M | None = None
        self._floor = 0
        self._cluster: ClusterSecrets | None = None
        self._tcb = TcbFloor()

    @property
    def model(self) -> M | None:
        return self._model

    @property
    def floor(self) -> int:
        """The highest version a member of this enclave's cluster is known to hold (0 alone)."""
        return self._floor

    @property
    def cluster(self) -> ClusterSecrets | None:
        return self._cluster

    @property
    def tcb_floor(self) -> TcbFloor:
        """The least platform a member of this enclave's cluster may be on (none alone)."""
        return self._tcb

    def check_newer(self, version: int, *, upload: bool) -> None:
        """Raises :class:`VersionNotNewer` unless ``version`` may be served: above the served one
        and, in a cluster, above the floor for an ``upload`` (a new version), at or above it for a
        file of the cluster's storage."""
        with self._lock:
            self._check_newer(version, upload=upload)

    def install(self, model: M, *, upload: bool) -> M | None:
        """Serve ``model`` (checked as :meth:`check_newer`); returns the model it replaces."""
        with self._lock:
            self._check_newer(model.version, upload=upload)
            previous, self._model = self._model, model
            self._floor = max(self._floor, model.version)
            return previous

    def raise_floor(self, floor: int) -> M | None:
        """Raise the floor to ``floor`` if it is higher; a served model below it is no longer
        served, and returned."""
        with self._lock:
            return self._raise_floor(floor)

    def join(self, secrets: ClusterSecrets, platform: TcbFloor) -> M | None:
        """Become a member of ``secrets``' cluster, its floors included: one step. ``platform``: this
        enclave's own, from its own evidence verified now (:meth:`raise_tcb`). Raises
        :class:`AlreadyJoined` if the enclave is a member already. Returns a served model the floor
        ended, if any."""
        with self._lock:
            if self._cluster is not None:
                raise AlreadyJoined("the enclave is already a member of its cluster")
            tcb = self._checked_tcb(secrets.tcb, platform)
            self._cluster, self._tcb = secrets, tcb
            return self._raise_floor(secrets.floor)

    def raise_tcb(self, platform: TcbFloor) -> TcbFloor:
        """This member's own platform, from its own evidence verified now: the cluster's TCB floor
        rises to it where it is higher. Raises :class:`TcbBelowFloor` (and changes nothing) where it
        is lower. Returns the floor."""
        with self._lock:
            if self._cluster is None:
                raise TransitionRefused("the enclave is not a member of a cluster yet")
            self._tcb = self._checked_tcb(self._tcb, platform)
            return self._tcb

    def refresh(self, secrets: ClusterSecrets, platform: TcbFloor) -> M | None:
        """A later release to a member: the giver's floors, if the giver is of this enclave's
        cluster (:class:`OtherCluster` otherwise), merged into this enclave's (they only rise);
        ``platform`` as for :meth:`join`. Returns a served model the floor ended, if any."""
        with self._lock:
            own = self._cluster
            if own is None:
                raise TransitionRefused("the enclave is not a member of a cluster yet")
            given = secrets.cluster_id + secrets.sealing_key + secrets.ohttp_key.private_bytes()
            held = own.cluster_id + own.sealing_key + own.ohttp_key.private_bytes()
            if not hmac.compare_digest(given, held):  # secrets: compared in constant time
                raise OtherCluster("key release refused: the giver is a member of another cluster")
            self._tcb = self._checked_tcb(self._tcb.merge(secrets.tcb), platform)
            return self._raise_floor(secrets.floor)

    # -- under the lock ----------------------------------------------------------------------------

    @staticmethod
    def _checked_tcb(floor: TcbFloor, platform: TcbFloor) -> TcbFloor:
        """``floor`` raised to ``platform``; :class:`TcbBelowFloor` if it is below it anywhere."""
        short = floor.shortfall(platform)
        if short:
            raise TcbBelowFloor(
                f"this enclave's own evidence is below the cluster's TCB floor: {short[0]}"
                " (its host gave it older collateral or a lower reported TCB)"
            )
        return floor.merge(platform)

    def _check_newer(self, version: int, *, upload: bool) -> None:
        current = self._model
        if current is not None and version <= current.version:
            raise VersionNotNewer(
                f"model version {version} is not newer than the served version {current.version}"
            )
        if self._cluster is not None and version < self._floor + upload:
            raise VersionNotNewer(
                f"model version {version} is not newer than version {self._floor},"
                " which a member of the cluster holds"
            )

    def _raise_floor(self, floor: int) -> M | None:
        if floor <= self._floor:
            return None
        self._floor = floor
        current = self._model
        if current is not None and current.version < floor:
            self._model = None
            return current
        return None
