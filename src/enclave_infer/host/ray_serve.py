"""Many enclaves as one service on Ray Serve: ``serve deploy deploy/ray/serve.yaml``.

Untrusted code, as the single-machine host is: each replica of the ``EnclaveHost`` deployment starts
its own enclave process on its node, with the same measured configuration, and relays ciphertext to
it through the same HTTP application as ``enclave-infer serve`` (:func:`host.app.create_app`). Ray's
proxy, controller, object store and GCS see what that host sees, and no more.

Before a replica takes requests (Ray routes none to it until its constructor returns) its enclave
joins the cluster by attested key release (:mod:`enclave_infer.cluster.keyrelease`): the host asks a
running replica, through a Ray deployment handle, to pass the enclave's join request to its own
enclave, and hands the release back. The replica of rank 0 founds the cluster when no member answers
(the first start). Members share the OHTTP key, so any replica answers any client, and seal models
into ``shared_dir``, which every replica's host watches so that its enclave loads a new model within
seconds. An enclave that dies is not restarted in place (it would need to join again): the replica
fails its health check and Ray replaces it; requests meanwhile get 503 with Retry-After, which the
SDK retries.

Needs the ``ray`` extra (``pip install 'enclave-infer[ray]'``); nothing else imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from enclave_infer import logs
from enclave_infer.attestation.evidence import Verifier
from enclave_infer.cluster.storage import model_files
from enclave_infer.config import EnclaveConfig, load_public_key_file
from enclave_infer.errors import EnclaveInferError, ProtocolError, TransportError, UsageError
from enclave_infer.host.app import DEFAULT_MAX_IN_FLIGHT, create_app
from enclave_infer.host.collateral import CollateralKeeper
from enclave_infer.host.enclave_process import EnclaveProcess
from enclave_infer.host.server import attest_at_start
from enclave_infer.protocol import framing
from enclave_infer.protocol.api import PROBLEM_MEDIA_TYPE, Problem
from enclave_infer.protocol.framing import FrameType

__all__ = ["EnclaveHost", "ReplicaLost", "build", "proxy_middlewares"]

log = logging.getLogger("enclave_infer.host")

# One key release attempt through Ray: a running member answers in milliseconds.
JOIN_ATTEMPT_SECONDS = 5.0
# The replica of rank 0 founds a new cluster after this long without an answer from a member.
FOUND_AFTER_SECONDS = 10.0
# Any other replica gives up after this long (its constructor fails; Ray starts another).
JOIN_TIMEOUT_SECONDS = 180.0
# After joining, this many more releases (from whichever members Ray picks): the enclave keeps the
# highest floor. And every so often a member asks again, so that one its host kept from loading a new
# version stops serving the old one.
EXTRA_RELEASES = 2
FLOOR_REFRESH_SECONDS = 30.0
# How often a host looks for new model files in the shared folder, and whether its enclave lives.
WATCH_SECONDS = 1.0
LIVENESS_SECONDS = 0.25


class KeyReleaseRefused(Exception):
    """A member's enclave refused (or could not make) a release; the message says why."""


class EnclaveHost:
    """One replica: an untrusted host and its enclave process."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        config: str,
        owner_public_key: str,
        shared_dir: str,
        data_dir: str,
        platform: str = "auto",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        log_format: str = "text",
    ) -> None:
        logs.configure("host", log_format)
        context = serve.get_replica_context()
        self._app_name, self._deployment = context.app_name, context.deployment
        self._rank = context.rank.rank if context.rank is not None else 0
        enclave_config = EnclaveConfig.load(
            Path(config), owner_public_key=load_public_key_file(Path(owner_public_key))
        )
        shared = Path(shared_dir)
        shared.mkdir(parents=True, exist_ok=True)
        self._shared = shared
        self._enclave = EnclaveProcess(
            enclave_config,
            Path(data_dir) / f"replica-{context.replica_id.unique_id}",
            platform=platform,
            log_format=log_format,
            cluster_storage=shared,
            restart=False,
        )
        self._keeper: CollateralKeeper | None = None
        await asyncio.to_thread(self._enclave.start)
        try:
            verifier = Verifier.production()
            self._keeper = await asyncio.to_thread(attest_at_start, self._enclave, verifier, None)
            await self._join()
        except BaseException:
            self._stop()
            raise
        self._asgi = create_app(self._enclave, self._keeper, max_in_flight=max_in_flight)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def __serve_build_asgi_app__(self) -> Any:
        return self._asgi

    # -- key release ---------------------------------------------------------------------------

    async def key_release(self, request: bytes) -> bytes:
        """A joining replica's request, through a Ray handle: this replica's enclave's release."""
        kind, payload = await self._cluster(FrameType.CLUSTER_RELEASE, request)
        if kind is not FrameType.CLUSTER_MESSAGE:
            raise KeyReleaseRefused(_problem(kind, payload))
        return payload

    async def _join(self) -> None:
        started = time.monotonic()
        kind, request = await self._cluster(FrameType.CLUSTER_JOIN)
        if kind is not FrameType.CLUSTER_MESSAGE:
            raise TransportError(f"the enclave made no join request: {_problem(kind, request)}")
        handle = serve.get_deployment_handle(self._deployment, app_name=self._app_name)
        release = handle.options(method_name="key_release")
        while True:
            answer: bytes | None = None
            try:
                answer = await asyncio.wait_for(release.remote(request), JOIN_ATTEMPT_SECONDS)
            except TimeoutError:
                pass  # no member is running yet
            except Exception as exc:  # a member refused, or died meanwhile: one line, try again
                log.warning("key release: %s", _one_line(exc))
                await asyncio.sleep(1.0)
            if answer is not None:
                kind, payload = await self._cluster(FrameType.CLUSTER_ACCEPT, answer)
                if kind is FrameType.CLUSTER_JOINED:
                    log.info("joined the cluster through key release in %.1f s", time.monotonic() - started)
                    for _ in range(EXTRA_RELEASES):  # the highest floor of several members
                        await self._release_to_self(release, request)
                    return
                log.warning("key release: %s", _problem(kind, payload))  # the enclave refused it
            waited = time.monotonic() - started
            if self._rank == 0 and waited >= FOUND_AFTER_SECONDS:
                kind, payload = await self._cluster(FrameType.CLUSTER_FOUND)
                if kind is not FrameType.CLUSTER_FOUNDED:
                    raise TransportError(f"the enclave could not found a cluster: {_problem(kind, payload)}")
                log.info("no member answered in %.0f s: founded a new cluster", waited)
                return
            if waited >= JOIN_TIMEOUT_SECONDS:
                raise TransportError(f"no member of the cluster released its keys in {waited:.0f} s")

    async def _release_to_self(self, release: Any, request: bytes) -> None:
        """One more release for ``request``, from whichever member Ray picks; the enclave takes from
        it the giver's floor only. Best effort: a failure changes nothing."""
        try:
            answer = await asyncio.wait_for(release.remote(request), JOIN_ATTEMPT_SECONDS)
            kind, payload = await self._cluster(FrameType.CLUSTER_ACCEPT, answer)
        except Exception as exc:
            log.info("floor refresh: %s", _one_line(exc))
            return
        if kind is not FrameType.CLUSTER_JOINED:
            log.warning("floor refresh: %s", _problem(kind, payload))

    async def _refresh_floor(self) -> None:
        """Ask a member for a release again: if any holds a newer model version than this enclave
        serves (its host may have kept it from loading it), the enclave stops serving the old one."""
        try:
            kind, request = await self._cluster(FrameType.CLUSTER_JOIN)
        except (TransportError, ProtocolError):
            return
        if kind is FrameType.CLUSTER_MESSAGE:
            handle = serve.get_deployment_handle(self._deployment, app_name=self._app_name)
            await self._release_to_self(handle.options(method_name="key_release"), request)

    async def _cluster(self, kind: FrameType, message: bytes = b"") -> tuple[FrameType, bytes]:
        current = self._keeper.current if self._keeper is not None else None
        collateral = current.data if current is not None else b""
        return await self._enclave.call(kind, framing.encode_cluster_payload(collateral, message))

    # -- the shared folder -----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Tell the enclave to load the cluster's newest model whenever the folder's files change (a
        name, or a file's size or time: one replaced under its name, too);
        and when the enclave has died, end this replica at once (Ray's proxy then stops routing to
        it, and Ray starts another, which joins the cluster), rather than answer 503s until the next
        health check."""
        seen: frozenset[tuple[str, int, int]] | None = None
        refreshed = time.monotonic()
        while True:
            if time.monotonic() - refreshed > FLOOR_REFRESH_SECONDS:
                refreshed = time.monotonic()
                await self._refresh_floor()
            for _ in range(round(WATCH_SECONDS / LIVENESS_SECONDS)):
                await asyncio.sleep(LIVENESS_SECONDS)
                if not self._enclave.running:
                    log.error("the enclave process has exited: stopping this replica for Ray to replace")
                    os._exit(1)
            try:
                files = await asyncio.to_thread(model_files, self._shared)
            except OSError as exc:
                log.warning("cannot list the shared folder: %s", exc.strerror)
                continue
            if files == seen:
                continue
            try:
                kind, _ = await self._cluster(FrameType.CLUSTER_RELOAD, framing.ClusterAction.RELOAD.value)
            except (TransportError, ProtocolError):
                continue
            if kind is FrameType.CLUSTER_CHECKED:
                seen = files

    # -- Ray's hooks -----------------------------------------------------------------------------

    def check_health(self) -> None:
        """Ray calls this periodically: a replica whose enclave died is replaced."""
        if not self._enclave.running:
            raise RuntimeError("the enclave process has exited")

    def __del__(self) -> None:
        self._stop()

    def _stop(self) -> None:
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.cancel()
        if getattr(self, "_keeper", None) is not None:
            self._keeper.stop()  # type: ignore[union-attr]
        if getattr(self, "_enclave", None) is not None:
            self._enclave.stop()


class ReplicaLost:
    """ASGI middleware for Ray's HTTP proxy: a request whose replica died before answering (Ray's
    proxy then sends nothing, and its server a bare 500) gets 503 ``enclave-unavailable`` with
    Retry-After, as the single-machine host answers when its enclave is down, so clients retry it
    (on another replica). Installed with ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
    enclave_infer.host.ray_serve:proxy_middlewares`` in the environment of ``ray start``."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            log.warning("a replica stopped before answering a request: 503")
        if not started:
            body = Problem.ENCLAVE_UNAVAILABLE.details(REPLICA_LOST_DETAIL).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"retry-after", str(REPLICA_LOST_RETRY_AFTER).encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


REPLICA_LOST_DETAIL = "the replica relaying this request stopped before its enclave answered; send it again"
REPLICA_LOST_RETRY_AFTER = 1


def proxy_middlewares() -> list[Any]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: middleware around Ray's proxy."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]


EnclaveHostDeployment = serve.deployment(name="EnclaveHost")(serve.ingress()(EnclaveHost))

_ARGS = {"config", "owner_public_key", "shared_dir", "data_dir", "platform", "max_in_flight", "log_format"}


def build(args: dict[str, Any]) -> Application:
    """The application builder ``serve deploy`` calls with the Serve config's ``args``."""
    unknown = set(args) - _ARGS
    missing = {"config", "owner_public_key", "shared_dir", "data_dir"} - set(args)
    if unknown or missing:
        raise UsageError(
            f"enclave_infer.host.ray_serve:build args: unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    kwargs = dict(args)
    if "max_in_flight" in kwargs:
        kwargs["max_in_flight"] = int(kwargs["max_in_flight"])
    for name in ("config", "owner_public_key", "shared_dir", "data_dir"):
        kwargs[name] = str(Path(kwargs[name]).absolute())  # the builder's working directory
    return EnclaveHostDeployment.bind(**kwargs)


def _problem(kind: FrameType, payload: bytes) -> str:
    if kind is FrameType.ERROR:
        try:
            return framing.decode_problem(payload).detail
        except (ProtocolError, EnclaveInferError):
            pass
    return f"unexpected {kind.name} frame"


def _one_line(exc: BaseException) -> str:
    """Ray wraps a remote exception with its traceback: its last line is the message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
