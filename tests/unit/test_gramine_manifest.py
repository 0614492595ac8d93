"""The Gramine-SGX manifest: rendered the way ``gramine-manifest`` renders it, then read as TOML.

No Gramine here: the template is rendered with Jinja2 configured as Gramine's ``gramine-manifest``
configures it (StrictUndefined, trailing newline kept, ``-D`` values as strings), with stand-ins
for Gramine's own template globals that return plausible paths.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest

from enclave_infer.attestation.measurement import TRUSTED_CODE_BASE
from enclave_infer.cli.gramine import CONFIG_NAME, gramine_variables, register, write_inputs
from enclave_infer.config import EnclaveConfig, format_public_key
from enclave_infer.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "gramine" / "enclave-infer.manifest.template"
OWNER_KEY = bytes(range(32))
GRAMINE_PKGLIBDIR = Path("/usr/lib/x86_64-linux-gnu/gramine")

# Manifest keys named insecure__* that the template may set, with the reason. None are needed.
JUSTIFIED_INSECURE_KEYS: set[str] = set()


class _Runtimedir:
    """Stand-in for Gramine's ``gramine.runtimedir()``: callable, and printable as a path."""

    def __call__(self, libc: str = "glibc") -> Path:
        return GRAMINE_PKGLIBDIR / "runtime" / libc

    def __str__(self) -> str:
        return str(self())


def gramine_env() -> jinja2.Environment:
    """Jinja2 as ``gramine-manifest`` sets it up (graminelibos/gen_jinja_env.py), with stand-ins."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["gramine"] = {
        "libos": GRAMINE_PKGLIBDIR / "libsysdb.so",
        "pkglibdir": GRAMINE_PKGLIBDIR,
        "runtimedir": _Runtimedir(),
    }
    env.globals["python"] = {  # the Python that runs gramine-manifest: the system's
        "stdlib": Path("/usr/lib/python3.10"),
        "distlib": Path("/usr/lib/python3/dist-packages"),
        "get_sys_path": lambda *_args, **_kw: iter([Path("/usr/lib/python3.10")]),
    }
    env.globals["env"] = {}
    return env


def render(variables: Mapping[str, str]) -> dict[str, Any]:
    text = gramine_env().from_string(TEMPLATE.read_text(encoding="utf-8")).render(**variables)
    return tomllib.loads(text)


def config(**overrides: Any) -> EnclaveConfig:
    return EnclaveConfig(owner_public_key=OWNER_KEY, **overrides)


def keys(doc: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted key in a TOML document, tables inside arrays included."""
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        yield dotted
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                yield from keys(item, f"{dotted}.")


# Non-default on every measured field the manifest takes.
CUSTOM = {"product_id": 7, "security_version": 3, "debug": True, "enclave_size": "8G", "max_threads": 32}


@pytest.fixture
def variables(tmp_path: Path) -> dict[str, str]:
    return gramine_variables(
        config(**CUSTOM), data_dir=tmp_path / "data", listen_port=7443, out_dir=tmp_path / "out"
    )


def test_argv_is_fixed_and_isolated(tmp_path: Path, variables: dict[str, str]) -> None:
    loader = render(variables)["loader"]
    assert loader["argv"] == [
        variables["python_argv0"],
        "-I",
        "-m",
        "enclave_infer.enclave",
        "--listen",
        "tcp:127.0.0.1:7443",
        "--config",
        str((tmp_path / "out").resolve() / "enclave.json"),
        "--storage",
        str((tmp_path / "data").resolve() / "sealed"),
        "--platform",
        "gramine-sgx",
    ]
    assert "argv_src_file" not in loader and "env_src_file" not in loader
    # The environment is fixed too: no PYTHONPATH, nothing passed through from the host.
    assert set(loader["env"]) == {"LD_LIBRARY_PATH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    assert all(isinstance(value, str) for value in loader["env"].values())
    assert loader["env"]["LD_LIBRARY_PATH"].startswith("/lib:")  # Gramine's glibc first
    assert loader["log_level"] == "error"
    # Left for Gramine (>= 1.7) to fill in with its own, measured LibOS.
    assert "entrypoint" not in loader


# Keys of Gramine's manifest schema (graminelibos/manifest_check.py, which gramine-manifest --check
# applies) that this manifest uses; a misspelt or deprecated key (sgx.thread_num) would not be here.
GRAMINE_SCHEMA_KEYS = {
    "libos.entrypoint",
    "loader.argv",
    "loader.env",
    "loader.log_level",
    "fs.mounts",
    "sys.enable_extra_runtime_domain_names_conf",
    "sys.enable_sigterm_injection",
    "sys.disallow_subprocesses",
    "sys.stack.size",
    "sgx.enclave_size",
    "sgx.max_threads",
    "sgx.isvprodid",
    "sgx.isvsvn",
    "sgx.debug",
    "sgx.remote_attestation",
    "sgx.file_check_policy",
    "sgx.trusted_files",
    "sgx.allowed_files",
}


def test_only_known_manifest_keys(variables: dict[str, str]) -> None:
    manifest = render(variables)
    used = set(keys(manifest))
    leaves = {k for k in used if k in GRAMINE_SCHEMA_KEYS or k.startswith("loader.env.")}
    tables = {k for k in used if any(s.startswith(f"{k}.") for s in GRAMINE_SCHEMA_KEYS)}
    mount_fields = {k for k in used if k.startswith("fs.mounts.")}
    assert used - leaves - tables - mount_fields == set()
    assert {k.removeprefix("fs.mounts.") for k in mount_fields} <= {"type", "path", "uri"}


def test_no_insecure_options(variables: dict[str, str]) -> None:
    manifest = render(variables)
    assert {k for k in keys(manifest) if "insecure__" in k} == JUSTIFIED_INSECURE_KEYS
    assert manifest["sgx"]["file_check_policy"] == "strict"
    assert manifest["sys"]["enable_extra_runtime_domain_names_conf"] is False


def test_sgx_identity_comes_from_the_config(variables: dict[str, str]) -> None:
    sgx = render(variables)["sgx"]
    assert sgx["enclave_size"] == "8G"
    assert sgx["max_threads"] == 32
    assert sgx["isvprodid"] == 7
    assert sgx["isvsvn"] == 3
    assert sgx["debug"] is True
    assert sgx["remote_attestation"] == "dcap"


def test_defaults_render_too(tmp_path: Path) -> None:
    sgx = render(gramine_variables(config(), data_dir=tmp_path, listen_port=7001, out_dir=tmp_path / "o"))[
        "sgx"
    ]
    assert (sgx["enclave_size"], sgx["max_threads"], sgx["isvprodid"], sgx["isvsvn"]) == ("4G", 32, 1, 1)
    assert sgx["debug"] is False


def test_trusted_and_allowed_files(tmp_path: Path, variables: dict[str, str]) -> None:
    manifest = render(variables)
    trusted = manifest["sgx"]["trusted_files"]
    config_path = (tmp_path / "out").resolve() / CONFIG_NAME
    for required in (
        f"file:{config_path}",
        f"file:{variables['python_executable']}",
        f"file:{variables['python_stdlib']}/",
        f"file:{variables['site_packages']}/",
        f"file:{GRAMINE_PKGLIBDIR}/runtime/glibc/",
    ):
        assert required in trusted
    # of the package, the trusted code base and nothing else: not host/, client/ or cli/
    package = [t for t in trusted if t.startswith(f"file:{variables['package_dir']}/")]
    assert package == [f"file:{variables['package_dir']}/{entry}" for entry in TRUSTED_CODE_BASE]
    if variables["pyvenv_cfg"]:
        assert f"file:{variables['pyvenv_cfg']}" in trusted
    sealed = (tmp_path / "data").resolve() / "sealed"
    assert manifest["sgx"]["allowed_files"] == [f"file:{sealed}/"]
    # Nothing both trusted and writable.
    assert not any(t.startswith(f"file:{sealed}") for t in trusted)


def test_mounts_map_host_paths_to_the_same_paths(variables: dict[str, str]) -> None:
    mounts = render(variables)["fs"]["mounts"]
    paths = [m["path"] for m in mounts]
    assert len(paths) == len(set(paths))
    for mount in mounts:
        if mount.get("type", "chroot") == "chroot" and mount["path"] != "/lib":
            assert mount["uri"] == f"file:{mount['path']}"
    sealed = f"{variables['data_dir']}/sealed"
    for needed in (
        sealed,
        variables["config_path"],
        variables["python_executable"],
        variables["site_packages"],
    ):
        assert needed in paths
    assert {"type": "tmpfs", "path": "/tmp"} in mounts


def test_the_fixed_command_line_finds_everything_inside_the_mounts(variables: dict[str, str]) -> None:
    """CPython's side of the bargain (no Gramine here): started the way the manifest starts it,
    with an empty environment, the interpreter's sys.path lies inside the mounted paths and the
    package comes from a measured folder."""
    manifest = render(variables)
    argv = manifest["loader"]["argv"]
    probe = (
        "import json, sys, enclave_infer; "
        "print(json.dumps([sys.flags.isolated, sys.path, enclave_infer.__file__]))"
    )
    done = subprocess.run(
        [argv[0], "-I", "-c", probe],
        executable=manifest["libos"]["entrypoint"],
        env={},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    isolated, path, package_file = json.loads(done.stdout)
    assert isolated == 1
    mounted = [Path(m["path"]) for m in manifest["fs"]["mounts"] if "uri" in m]
    for entry in path:
        if Path(entry).exists():
            assert any(Path(entry).is_relative_to(m) for m in mounted), entry
    trusted_dirs = [Path(t[5:]) for t in manifest["sgx"]["trusted_files"] if t.endswith("/")]
    trusted_files = {Path(t[5:]) for t in manifest["sgx"]["trusted_files"] if not t.endswith("/")}
    assert Path(package_file) in trusted_files or any(
        Path(package_file).is_relative_to(d) for d in trusted_dirs
    )


def test_outside_a_venv_argv0_is_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    found = gramine_variables(config(), data_dir=tmp_path, listen_port=7001, out_dir=tmp_path / "o")
    assert found["pyvenv_cfg"] == ""
    assert found["python_argv0"] == found["python_executable"] == str(Path(sys.executable).resolve())


@pytest.mark.parametrize(
    "change",
    [
        {"pyvenv_cfg": ""},  # not in a virtual environment
        {"python_shared_lib": "", "python_libdir": ""},  # statically linked (Debian's python3)
        {"python_shared_lib": "/opt/py/lib/libpython3.11.so.1.0", "python_libdir": "/opt/py/lib"},
        {"python_platstdlib": "/usr/lib64/python3.11"},  # lib64 distributions
        {"site_packages_plat": "/venv/lib64/python3.11/site-packages"},
        {"package_root": "SITE"},  # a regular, non-editable install
    ],
)
def test_variants_render(variables: dict[str, str], change: dict[str, str]) -> None:
    changed = dict(variables)
    changed.update({k: variables["site_packages"] if v == "SITE" else v for k, v in change.items()})
    manifest = render(changed)
    paths = [m["path"] for m in manifest["fs"]["mounts"]]
    assert len(paths) == len(set(paths))
    trusted = manifest["sgx"]["trusted_files"]
    assert len(trusted) == len(set(trusted))
    if changed["python_shared_lib"]:
        assert f"file:{changed['python_shared_lib']}" in trusted
        assert manifest["loader"]["env"]["LD_LIBRARY_PATH"].endswith(f":{changed['python_libdir']}")
    else:
        assert not any("libpython" in t for t in trusted)
    assert any(t.endswith("pyvenv.cfg") for t in trusted) == bool(changed["pyvenv_cfg"])


def test_template_takes_exactly_the_renderers_variables(variables: dict[str, str]) -> None:
    # A bare environment: find_undeclared_variables leaves out names the environment defines.
    ast = jinja2.Environment().parse(TEMPLATE.read_text(encoding="utf-8"))
    # Only gramine.runtimedir() from Gramine's globals; the rest is what our renderer supplies.
    assert jinja2.meta.find_undeclared_variables(ast) == set(variables) | {"gramine"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"enclave_size": "3G"}, "power of two"),
        ({"enclave_size": "768M"}, "power of two"),
        ({"max_threads": 2}, "at least 4"),
        ({"max_threads": 16}, r"max_threads is 16 but the enclave may run 26 threads: one per request"),
    ],
)
def test_configs_sgx_cannot_run_are_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        gramine_variables(config(**overrides), data_dir=tmp_path, listen_port=7001, out_dir=tmp_path)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_port(tmp_path: Path, port: int) -> None:
    with pytest.raises(UsageError, match="--port"):
        gramine_variables(config(), data_dir=tmp_path, listen_port=port, out_dir=tmp_path)


def test_paths_that_would_break_the_toml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="quote"):
        gramine_variables(config(), data_dir=tmp_path / 'a"b', listen_port=7001, out_dir=tmp_path)


def test_sealed_folder_must_not_be_measured(tmp_path: Path, variables: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="outside the measured folder"):
        gramine_variables(
            config(), data_dir=Path(variables["package_dir"]), listen_port=7001, out_dir=tmp_path
        )


def test_write_inputs(tmp_path: Path) -> None:
    out = tmp_path / "build" / "gramine"
    path = write_inputs(config(), out)
    assert path == out / CONFIG_NAME
    assert path.read_bytes() == config().canonical()
    write_inputs(config(max_threads=8), out)
    assert path.read_bytes() == config(max_threads=8).canonical()
    assert EnclaveConfig.from_canonical(path.read_bytes()) == config(max_threads=8)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="enclave-infer")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_writes_config_and_prints_defines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub = tmp_path / "owner.key.pub"
    pub.write_text(format_public_key(OWNER_KEY))
    toml = tmp_path / "enclave.toml"
    toml.write_text(  # 6 requests + ONNX Runtime's 4 + batcher + main + Gramine's 4 = 16 threads
        "product_id = 9\nsecurity_version = 4\nenclave_size = '2G'\nmax_threads = 16\n"
        "[limits]\nmax_concurrent_requests = 6\n"
    )
    out, data = tmp_path / "out dir", tmp_path / "data"  # a space: quoting must survive eval
    argv = ["gramine-manifest", "--owner-public-key", str(pub), "--config", str(toml)]
    argv += ["--data-dir", str(data), "--port", "7100", "--out", str(out)]
    assert cli(argv) == 0

    expected = EnclaveConfig.load(toml, owner_public_key=OWNER_KEY)
    assert (out / CONFIG_NAME).read_bytes() == expected.canonical()

    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("-D ") for line in lines)
    # What `eval "gramine-manifest $(...)"` passes on, parsed as gramine-manifest parses -D.
    words = shlex.split(" ".join(lines))
    assert words[0::2] == ["-D"] * len(lines)
    defines = dict(word.split("=", 1) for word in words[1::2])
    assert defines == gramine_variables(expected, data_dir=data, listen_port=7100, out_dir=out)

    manifest = render(defines)
    assert manifest["loader"]["argv"][5:8] == [
        "tcp:127.0.0.1:7100",
        "--config",
        str(out.resolve() / CONFIG_NAME),
    ]
    assert (manifest["sgx"]["isvprodid"], manifest["sgx"]["isvsvn"]) == (9, 4)


def test_cli_needs_an_owner_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="owner public key"):
        cli(["gramine-manifest", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_bad_port_before_writing(tmp_path: Path) -> None:
    pub = tmp_path / "owner.key.pub"
    pub.write_text(format_public_key(OWNER_KEY))
    with pytest.raises(UsageError, match="--port"):
        cli(["gramine-manifest", "--owner-public-key", str(pub), "--port", "0", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
