"""The trust boundary is visible in the tree, and the tree keeps it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import enclave_infer
from enclave_infer.attestation.measurement import TRUSTED_CODE_BASE, trusted_files

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


def module_file(module: str) -> Path | None:
    """The package file that ``enclave_infer.a.b`` names (a module or a package's __init__), relative
    to the package root; None for a name that is no module (``from enclave_infer.a import name``)."""
    parts = module.split(".")[1:]
    for candidate in (Path(*parts).with_suffix(".py") if parts else None, Path(*parts, "__init__.py")):
        if candidate is not None and (PACKAGE / candidate).is_file():
            return candidate
    return None


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:``, which never run."""
    yield node
    for child in ast.iter_child_nodes(node):
        type_checking = isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING"
        if isinstance(child, ast.If) and type_checking:
            for other in child.orelse:
                yield from _run_time_nodes(other)
            continue
        yield from _run_time_nodes(child)


def package_imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports, ``from a import b`` naming ``a.b`` where b
    is a module."""
    names: set[str] = set()
    for node in _run_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    inside = {n for n in names if n == "enclave_infer" or n.startswith("enclave_infer.")}
    return {n for n in inside if module_file(n) is not None or n.rpartition(".")[0] not in inside}


def test_trusted_code_imports_only_trusted_code() -> None:
    """The trusted code base (attestation/measurement.py's one list) is closed under import: an
    enclave that imported a module outside it would run code the measurement does not cover."""
    trusted = set(trusted_files())
    assert Path("enclave/server.py") in trusted and Path("protocol/ohttp.py") in trusted
    for rel in trusted:
        for module in package_imports(PACKAGE / rel):
            target = module_file(module)
            assert target is not None, f"{rel} imports {module}, which is no module of the package"
            assert target in trusted, f"{rel} imports {module} ({target}), outside the trusted code base"


def test_the_untrusted_sides_are_outside_the_trusted_code_base() -> None:
    for rel in trusted_files():
        assert rel.parts[0] not in ("host", "client", "cli"), rel
    assert not any(p.name == "ray_serve.py" for p in trusted_files())


def test_the_readme_names_the_trusted_code_base() -> None:
    """The README's account of what is trusted is the list the measurement and Gramine use."""
    readme = " ".join((PACKAGE.parent.parent / "README.md").read_text().split())
    listed = ", ".join(f"`{entry}`" for entry in TRUSTED_CODE_BASE)
    assert f"The trusted code base: {listed}." in readme


def test_only_the_ray_deployment_needs_ray_and_nothing_imports_it() -> None:
    """`enclave-infer serve` is unchanged for users who do not install the ray extra."""
    for path in PACKAGE.rglob("*.py"):
        imports = imported_modules(path)
        assert "enclave_infer.host.ray_serve" not in imports, path.relative_to(PACKAGE)
        if path.name != "ray_serve.py":
            assert not {m for m in imports if m == "ray" or m.startswith("ray.")}, path.relative_to(PACKAGE)


def test_the_ray_deployment_is_untrusted_host_code_and_importing_the_host_needs_no_ray() -> None:
    import subprocess
    import sys

    assert not (PACKAGE / "ray_serve.py").exists()
    assert (PACKAGE / "host" / "ray_serve.py").exists()
    assert Path("host/ray_serve.py") not in trusted_files()  # not measured
    code = "import sys, enclave_infer.host, enclave_infer.host.app; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


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
    "Attestation", "Constraint", "EnclaveReport", "SecurityLevel", "Tee", "Verifier", "parse_constraint",
    # receipts, verified offline; UnsafeNoPolicy: the explicit way to verify one without a constraint
    "verify_receipt", "UnsafeNoPolicy",
    # the model owner's key
    "generate_owner_key", "load_owner_key",
    # errors
    "EnclaveInferError", "UsageError", "ProtocolError", "DecryptionError", "AttestationError",
    "ConstraintError", "ModelPinError", "TransportError", "RemoteError", "InvalidRequestError",
    "InvalidImageError", "TooLargeError", "NoModelError", "ProvisionRefusedError", "OverloadedError",
    "UnavailableError", "EnclaveFailureError", "KeyConfigurationChangedError",
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
