"""deploy/ray: the Serve config is one Ray 2.60 accepts, the RayService one KubeRay's CRD accepts.

Neither schema refuses a key it does not know (Serve's pydantic models ignore extra keys, the CRD has no
``additionalProperties: false``), so both files are also walked key by key against the schema: a
misspelt key must fail here, not be dropped silently on deploy. The CRD is read from
``../shared/vectors/kuberay`` beside the repository (tests/shared_vectors.py: skipped in a clone without
``../shared/vectors``, failed when that folder lacks the CRD).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
import subprocess
import typing
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.shared_vectors import KUBERAY_VECTORS, REPOSITORY, shared_file

RAY_DEPLOY = REPOSITORY / "deploy" / "ray"

APPLICATION = "enclave-infer"
DEPLOYMENT = "EnclaveHost"
IMPORT_PATH = "enclave_infer.host.ray_serve:build"
BUILDER_ARGS = {"config", "owner_public_key", "shared_dir", "data_dir", "platform"}
PLATFORMS = {"auto", "simulation", "gramine-sgx", "tsm"}

# Kubernetes checks metadata itself (the CRD says only `type: object`): the ObjectMeta fields a
# manifest may set.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


# --- schemas -------------------------------------------------------------------------------------------


def serve_deploy_schema() -> Any:
    """Ray 2.60's ``ServeDeploySchema`` (pydantic v2), imported here only: nothing under src/ imports ray."""
    with warnings.catch_warnings():
        # ray.serve's own models still use pydantic v1-style Field arguments.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        from ray.serve.schema import ServeDeploySchema
    return ServeDeploySchema


def rayservice_schema() -> dict[str, Any]:
    """The ``ray.io/v1`` openAPIV3Schema of KubeRay's RayService CRD, with ObjectMeta for ``metadata``."""
    path = shared_file(KUBERAY_VECTORS, "ray.io_rayservices.yaml")
    # 1 MB of YAML: libyaml's loader where PyYAML has it (five times faster).
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == "RayService"
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    assert schema["properties"]["metadata"] == {"type": "object"}
    schema["properties"]["metadata"] = OBJECT_META
    return schema


# --- key-by-key walks ----------------------------------------------------------------------------------


def unknown_crd_keys(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of ``value`` that ``schema`` (OpenAPI v3, structural) does not define, as dotted paths.

    ``properties`` names the keys an object may have, an ``additionalProperties`` schema covers a map's
    values, ``x-kubernetes-preserve-unknown-fields`` (or ``additionalProperties: true``) lets anything
    through; an object schema with none of these keeps no key at all (the API server prunes them).
    """
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        anything = schema.get("x-kubernetes-preserve-unknown-fields") is True or additional is True
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in properties:
                found += unknown_crd_keys(item, properties[key], where)
            elif isinstance(additional, dict):
                found += unknown_crd_keys(item, additional, where)
            elif not anything:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_crd_keys(item, schema["items"], f"{path}[{index}]")
    return found


def _models_in(annotation: Any) -> list[type]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]


def unknown_model_keys(value: Any, model: Any, path: str = "") -> list[str]:
    """Keys of ``value`` that the pydantic ``model`` has no field (or alias) for, as dotted paths.

    Fields typed as plain dicts (``args``, ``resources``, ``runtime_env``) are free; a field whose type
    holds exactly one model (``Optional[X]``, ``list[X]``, ``Union[dict, X]``) is walked into.
    """
    found: list[str] = []
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += unknown_model_keys(item, model, f"{path}[{index}]")
        return found
    if not isinstance(value, dict):
        return found
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                fields[alias] = field
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            found.append(where)
            continue
        models = _models_in(fields[key].annotation)
        if len(models) == 1:
            found += unknown_model_keys(item, models[0], where)
    return found


def check_serve_config(config: dict[str, Any]) -> Any:
    """Validate a Serve config as ``serve deploy`` and KubeRay would, and refuse unknown keys."""
    schema = serve_deploy_schema()
    parsed = schema.model_validate(config)
    assert unknown_model_keys(config, schema) == []
    return parsed


def check_rayservice(manifest: dict[str, Any], schema: dict[str, Any]) -> None:
    """Validate a RayService against the CRD schema, and refuse keys the CRD does not define.

    Draft 7 is the nearest JSON Schema to OpenAPI v3.0: the keywords it lacks (``nullable``, the
    ``x-kubernetes-*`` extensions, CEL rules) are ignored, as are ``format`` and ``default``.
    """
    jsonschema.Draft7Validator(schema).validate(manifest)
    assert unknown_crd_keys(manifest, schema) == []


def refused(check: Any, document: dict[str, Any], *args: Any) -> bool:
    try:
        check(document, *args)
    except (AssertionError, ValueError, jsonschema.ValidationError):
        return True
    return False


# --- the files -----------------------------------------------------------------------------------------


def load_serve_yaml() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((RAY_DEPLOY / "serve.yaml").read_text(encoding="utf-8"))
    return config


def load_rayservice_yaml() -> tuple[dict[str, Any], dict[str, Any]]:
    """The RayService and the PersistentVolumeClaim of deploy/ray/rayservice.yaml."""
    documents = list(yaml.safe_load_all((RAY_DEPLOY / "rayservice.yaml").read_text(encoding="utf-8")))
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents) == 2
    return by_kind["RayService"], by_kind["PersistentVolumeClaim"]


def the_deployment(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    [app] = config["applications"]
    [deployment] = app["deployments"]
    return app, deployment


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """``rayStartParams.resources`` as ``ray start --resources`` reads it after the shell's unquoting."""
    if "resources" not in params:
        return {}
    [word] = shlex.split(params["resources"])
    resources: dict[str, float] = json.loads(word)
    return resources


def pod_groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({group["groupName"]: group for group in cluster["workerGroupSpecs"]})
    return groups


def mounts(group: dict[str, Any]) -> dict[str, str]:
    """mount path -> volume name, of the Ray container (KubeRay's is the first)."""
    container = group["template"]["spec"]["containers"][0]
    return {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}


def volumes(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in group["template"]["spec"].get("volumes", [])}


# --- tests ---------------------------------------------------------------------------------------------


def test_the_local_serve_config_is_one_ray_accepts() -> None:
    config = load_serve_yaml()
    parsed = check_serve_config(config)
    [app] = parsed.applications
    assert (app.name, app.route_prefix, app.import_path) == (APPLICATION, "/", IMPORT_PATH)
    assert set(app.args) == BUILDER_ARGS and all(isinstance(v, str) for v in app.args.values())
    assert app.args["platform"] == "simulation"
    [deployment] = app.deployments
    assert deployment.name == DEPLOYMENT
    assert deployment.num_replicas == 2 and deployment.max_ongoing_requests == 16
    assert deployment.ray_actor_options.num_cpus == 1
    # Both nodes of the demo are on one machine: one proxy, or the second could not bind the port.
    assert parsed.proxy_location.value == "HeadOnly"
    # Relative paths (resolved where `ray start` ran), never a machine's own.
    assert not any(Path(app.args[key]).is_absolute() for key in BUILDER_ARGS - {"platform"})

    # A misspelt key anywhere is refused, not ignored (nor replaced by its default) as pydantic would.
    misspellings: list[tuple[Any, str, str]] = [
        (lambda c: c, "proxy_location", "proxy_locaton"),
        (lambda c: the_deployment(c)[0], "route_prefix", "route_prefx"),
        (lambda c: the_deployment(c)[1], "max_ongoing_requests", "max_ongoing_request"),
        (lambda c: the_deployment(c)[1]["ray_actor_options"], "num_cpus", "num_cpu"),
    ]
    for locate, right, wrong in misspellings:
        config = load_serve_yaml()
        parent = locate(config)
        parent[wrong] = parent.pop(right)
        assert refused(check_serve_config, config), wrong


def test_the_rayservice_is_one_kuberays_crd_accepts() -> None:
    schema = rayservice_schema()
    manifest, _ = load_rayservice_yaml()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    check_rayservice(manifest, schema)

    # rayStartParams values must be strings: a number is refused.
    wrong_type = copy.deepcopy(manifest)
    wrong_type["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert refused(check_rayservice, wrong_type, schema)
    # A misspelt key at any depth is refused: RayService, cluster, worker group, pod spec, container.
    spec = manifest["spec"]
    worker = spec["rayClusterConfig"]["workerGroupSpecs"][0]
    misspellings: list[tuple[dict[str, Any], str, str]] = [
        (spec, "serveConfigV2", "serveConfigv2"),
        (spec["rayClusterConfig"], "workerGroupSpecs", "workerGroupSpec"),
        (worker, "rayStartParams", "rayStartParam"),
        (worker["template"]["spec"], "nodeSelector", "nodeSelecter"),
        (worker["template"]["spec"]["containers"][0], "volumeMounts", "volumemounts"),
        (manifest["metadata"], "name", "nmae"),
    ]
    for parent, right, wrong in misspellings:
        parent[wrong] = parent.pop(right)
        assert refused(check_rayservice, manifest, schema), wrong
        parent[right] = parent.pop(wrong)
    check_rayservice(manifest, schema)


def test_the_rayservice_serves_the_same_application_on_tees() -> None:
    manifest, claim = load_rayservice_yaml()
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    check_serve_config(serve_config)
    app, deployment = the_deployment(serve_config)
    local_app, local_deployment = the_deployment(load_serve_yaml())
    for key in ("name", "route_prefix", "import_path"):
        assert app[key] == local_app[key]
    assert deployment["name"] == local_deployment["name"] == DEPLOYMENT
    assert set(app["args"]) == set(local_app["args"]) == BUILDER_ARGS
    assert app["args"]["platform"] in PLATFORMS - {"simulation", "auto"}
    assert deployment["max_ongoing_requests"] == 16
    assert deployment["ray_actor_options"]["num_cpus"] == 1
    # KubeRay's workers only turn ready with a local proxy (HeadOnly would leave them unready).
    assert serve_config["proxy_location"] == "EveryNode"

    groups = pod_groups(manifest)
    assert set(groups) == {"head", "sgx", "tdx", "sev-snp"}
    # No replica on the head: it has no CPU for Ray and none of the TEE resources.
    head = groups.pop("head")
    assert head["rayStartParams"]["num-cpus"] == "0" and not ray_start_resources(head["rayStartParams"])
    # The replicas' custom resources are offered by TEE workers only, one kind per group.
    wanted = deployment["ray_actor_options"]["resources"]
    offering = [
        name for name, g in groups.items() if set(wanted) <= set(ray_start_resources(g["rayStartParams"]))
    ]
    assert offering == ["sgx"]
    kinds = {"sgx": "sgx", "tdx": "tdx", "sev-snp": "snp"}
    for name, group in groups.items():
        assert ray_start_resources(group["rayStartParams"]) == {"tee": 1, kinds[name]: 1}

    # Placement per kind.
    sgx = groups["sgx"]["template"]["spec"]
    assert sgx["nodeSelector"] == {"intel.feature.node.kubernetes.io/sgx": "true"}
    limits = sgx["containers"][0]["resources"]["limits"]
    assert {"sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision"} <= set(limits)
    assert "runtimeClassName" not in sgx
    for name, runtime_class, label in [
        ("tdx", "kata-qemu-tdx", "intel.feature.node.kubernetes.io/tdx"),
        ("sev-snp", "kata-qemu-snp", "amd.feature.node.kubernetes.io/snp"),
    ]:
        pod = groups[name]["template"]["spec"]
        assert pod["runtimeClassName"] == runtime_class and pod["nodeSelector"] == {label: "true"}

    # shared_dir: the ReadWriteMany claim, mounted at the same path in every pod; data_dir: memory, per pod.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, group in pod_groups(manifest).items():
        shared = volumes(group)[mounts(group)[app["args"]["shared_dir"]]]
        assert shared["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
        if name != "head":
            data = volumes(group)[mounts(group)[app["args"]["data_dir"]]]
            assert data["emptyDir"]["medium"] == "Memory", name


# --- the image it names --------------------------------------------------------------------------------

# The committed manifest cannot name the digest of the image built from its own commit (the digest
# depends on the commit): it holds this placeholder, which `make image` (image/release.py) replaces.
PLACEHOLDER = "registry.example.com/enclave-infer-ray@sha256:DIGEST-WRITTEN-BY-MAKE-IMAGE"
IMAGE_OUT = REPOSITORY / "build" / "image"


def images(manifest: dict[str, Any]) -> list[str]:
    return [
        container["image"]
        for group in pod_groups(manifest).values()
        for container in group["template"]["spec"]["containers"]
    ]


def test_every_pod_runs_the_ray_image_named_by_a_placeholder_for_its_digest() -> None:
    manifest, _ = load_rayservice_yaml()
    assert images(manifest) == [PLACEHOLDER] * 4


def test_the_rendered_manifest_names_the_built_ray_image_by_digest() -> None:
    """Where `make image` has run on this commit: build/image/deploy/rayservice.yaml is the committed
    file with the digest of the Ray image's manifest from release.json, and KubeRay's CRD accepts it."""
    release_path = IMAGE_OUT / "release.json"
    if not release_path.exists():
        pytest.skip("no build/image/release.json: `make image` (as root) renders the manifest")
    release = json.loads(release_path.read_text())
    head = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    if release["source_commit"] != head.stdout.strip():
        pytest.skip("build/image was built from another commit than HEAD: `make image` rebuilds it")
    rendered_path = IMAGE_OUT / "deploy" / "rayservice.yaml"
    digest = release["oci_ray"]["manifest_digest"]
    assert digest.startswith("sha256:") and len(digest) == 71
    rendered = rendered_path.read_text(encoding="utf-8")
    manifest = next(d for d in yaml.safe_load_all(rendered) if d["kind"] == "RayService")
    [name] = {image.split("@")[0] for image in images(manifest)}
    assert name.endswith("/enclave-infer-ray")
    committed = (RAY_DEPLOY / "rayservice.yaml").read_text(encoding="utf-8")
    assert rendered == committed.replace(PLACEHOLDER, f"{name}@{digest}")
    assert images(manifest) == [f"{name}@{digest}"] * 4
    check_rayservice(manifest, rayservice_schema())
    assert (
        release["artifacts"]["deploy/rayservice.yaml"]["sha256"]
        == hashlib.sha256(rendered.encode()).hexdigest()
    )
