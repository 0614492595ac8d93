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
    for side in ("enclave", "protocol", "attestation"):
        for path in (PACKAGE / side).rglob("*.py"):
            bad = {
                m for m in imported_modules(path)
                if m.startswith(("enclave_infer.host", "enclave_infer.client", "enclave_infer.cli"))
            }  # fmt: skip
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_public_surface() -> None:
    assert set(enclave_infer.__all__) >= {"Client", "Classification", "EnclaveInferError"}
    assert enclave_infer.Client.__name__ == "Client"
