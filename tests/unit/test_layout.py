"""The trust boundary is visible in the tree, and the tree keeps it."""

from __future__ import annotations

import ast
from pathlib import Path

import enclave_infer

PACKAGE = Path(enclave_infer.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_untrusted_sides_never_import_the_enclave() -> None:
    for side in ("host", "client", "cli"):
        for path in (PACKAGE / side).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.startswith("enclave_infer.enclave")}
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_trusted_code_never_imports_the_untrusted_sides() -> None:
    for side in ("enclave", "protocol", "attestation", "cluster"):
        for path in (PACKAGE / side).rglob("*.py"):
            bad = {
                m for m in imported_modules(path)
                if m.startswith(("enclave_infer.host", "enclave_infer.client", "enclave_infer.cli"))
            }  # fmt: skip
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_only_the_ray_deployment_needs_ray_and_nothing_imports_it() -> None:
    """`enclave-infer serve` is unchanged for users who do not install the ray extra."""
    for path in PACKAGE.rglob("*.py"):
        imports = imported_modules(path)
        assert "enclave_infer.ray_serve" not in imports, path.relative_to(PACKAGE)
        if path.name != "ray_serve.py":
            assert not {m for m in imports if m == "ray" or m.startswith("ray.")}, path.relative_to(PACKAGE)


def test_attestation_never_imports_the_enclave() -> None:
    # the enclave builds evidence with attestation's codecs (the SEV-SNP container); never the reverse
    for path in (PACKAGE / "attestation").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.startswith("enclave_infer.enclave")}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


PUBLIC = {
    # the SDK and what it returns
    "Client", "ClientConfig", "Classification", "Prediction", "ModelInfo", "ProvisionResult", "Preprocessing",
    "Runtime", "Problem",
    # attestation
    "Attestation", "Constraint", "EnclaveReport", "SecurityLevel", "Verifier", "parse_constraint",
    # the model owner's key
    "generate_owner_key", "load_owner_key",
    # errors
    "EnclaveInferError", "UsageError", "ProtocolError", "DecryptionError", "AttestationError",
    "ConstraintError", "ModelPinError", "TransportError", "RemoteError", "InvalidRequestError",
    "InvalidImageError", "TooLargeError", "NoModelError", "ProvisionRefusedError", "OverloadedError",
    "UnavailableError", "EnclaveFailureError",
}  # fmt: skip


def test_public_surface_is_exactly_what_users_import() -> None:
    assert set(enclave_infer.__all__) == PUBLIC
    assert len(enclave_infer.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(enclave_infer, name) is not None, name
    assert enclave_infer.Client.__name__ == "Client"
    assert dir(enclave_infer) == sorted(PUBLIC)


def test_every_subpackage_says_it_is_internal_and_which_side_it_is_on() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.startswith("Internal:"), init.parent.name


def test_every_exception_the_sdk_maps_a_problem_to_is_public() -> None:
    from enclave_infer.client._sdk import PROBLEM_ERRORS
    from enclave_infer.protocol.api import Problem

    assert set(PROBLEM_ERRORS) == set(Problem)  # every problem type has its one class
    assert {cls.__name__ for cls in PROBLEM_ERRORS.values()} <= PUBLIC


# The owner's model export tools (convert.py, export.py) are the client modules with public functions.
CLIENT_PUBLIC_MODULES = {"__init__", "convert", "export"}


def test_the_client_modules_are_private_and_so_is_the_request_plumbing() -> None:
    """As httpx: users import from ``enclave_infer``; a module they might import by mistake has an
    underscore name, and the client's raw OHTTP request is not a method they can call."""
    modules = {path.stem for path in (PACKAGE / "client").glob("*.py")}
    assert modules - CLIENT_PUBLIC_MODULES, modules
    assert all(name.startswith("_") for name in modules - CLIENT_PUBLIC_MODULES), modules
    public_methods = {name for name in vars(enclave_infer.Client) if not name.startswith("_")}
    assert public_methods == {
        "attest",
        "classify",
        "close",
        "inspect",
        "model_info",
        "provision",
        "provision_file",
    }
