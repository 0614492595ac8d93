"""``enclave-infer gramine-manifest``: the inputs Gramine's ``gramine-manifest`` needs for our template.

Untrusted-side code, run by the operator on the build machine; it needs neither Gramine nor SGX.
It writes the measured configuration (``enclave.json``, the canonical JSON the enclave loads, which
the manifest lists as a trusted file and so folds into MRENCLAVE) and prints one ``-D name=value``
argument per line for ``deploy/gramine/enclave-infer.manifest.template``::

    eval "gramine-manifest $(enclave-infer gramine-manifest --out build/gramine) \\
        deploy/gramine/enclave-infer.manifest.template build/gramine/enclave-infer.manifest"

Every value is shell-quoted (``eval`` undoes the quoting; a bare ``$(...)`` does not, so it only
works for paths without spaces). Paths describe the Python that runs this command: run it with the
interpreter and virtual environment the enclave is to use, because everything in them is measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import sysconfig
from pathlib import Path

import enclave_infer
from enclave_infer.attestation.measurement import TRUSTED_CODE_BASE
from enclave_infer.cli._options import add_config, add_data_dir, load_config
from enclave_infer.config import EnclaveConfig
from enclave_infer.errors import UsageError

__all__ = ["CONFIG_NAME", "DEFAULT_PORT", "gramine_variables", "register", "write_inputs"]

CONFIG_NAME = "enclave.json"
DEFAULT_PORT = 7001
# Gramine documents sgx.max_threads >= 4 even for one application thread: main, IPC, async and a
# TLS-handshake helper thread all need a slot.
MIN_THREADS = 4
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def enclave_threads(config: EnclaveConfig) -> int:
    """The most threads the enclave runs at once: a connection thread per request in the enclave
    (the host sends no more at once), ONNX Runtime's intra-op pool (a quarter of max_threads, at
    most), the batcher, the main thread, and Gramine's own helpers."""
    return config.limits.max_concurrent_requests + config.max_threads // 4 + 2 + MIN_THREADS


def gramine_variables(
    config: EnclaveConfig, *, data_dir: Path, listen_port: int, out_dir: Path
) -> dict[str, str]:
    """Everything the manifest template takes, as the strings ``gramine-manifest -D`` passes.

    Empty strings mean "not applicable" (no virtual environment, a statically linked Python); the
    template tests for them.
    """
    if isinstance(listen_port, bool) or not 0 < listen_port < 65536:
        raise UsageError(f"--port must be 1..65535, got {listen_port}")
    _check_enclave_size(config.enclave_size)
    if config.max_threads < MIN_THREADS:
        raise UsageError(
            f"max_threads is {config.max_threads}; Gramine needs at least {MIN_THREADS} "
            "(its own helper threads take thread slots too)"
        )
    needed = enclave_threads(config)
    if config.max_threads < needed:
        raise UsageError(
            f"max_threads is {config.max_threads} but the enclave may run {needed} threads: one per request"
            f" it works on (limits.max_concurrent_requests = {config.limits.max_concurrent_requests}),"
            f" ONNX Runtime's pool ({config.max_threads // 4}), the batcher, the main thread and Gramine's"
            f" {MIN_THREADS}; raise max_threads or lower max_concurrent_requests"
        )

    if not sys.executable:
        raise UsageError("cannot tell which Python runs this command (sys.executable is empty)")
    # The ELF binary Gramine loads: symlinks resolved (a venv's bin/python is one).
    executable = Path(sys.executable).resolve()
    pyvenv_cfg = Path(sys.prefix) / "pyvenv.cfg"
    in_venv = sys.prefix != sys.base_prefix and pyvenv_cfg.is_file()
    # argv[0]. In a venv, its bin/python, deliberately not resolved: CPython finds a virtual
    # environment by looking for pyvenv.cfg in, or one level above, the folder of argv[0]. With -I,
    # which ignores PYTHONPATH and PYTHONHOME, that is how the venv's site-packages get onto
    # sys.path. Outside a venv, the binary itself (the path that is mounted).
    argv0 = Path(os.path.abspath(sys.executable)) if in_venv else executable

    # The interpreter's own library, not the venv's: platstdlib would otherwise name the venv.
    stdlib = Path(sysconfig.get_path("stdlib"))
    platstdlib = Path(sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix}))
    shared_lib = _shared_libpython()

    # Where this interpreter imports third-party code from. Not resolved: these must be the very
    # strings Python computes inside the enclave, where the same paths are mounted.
    site_packages = Path(sysconfig.get_path("purelib"))
    site_packages_plat = Path(sysconfig.get_path("platlib"))
    package_dir = Path(os.path.abspath(enclave_infer.__file__)).parent
    # The sys.path entry holding the package: site-packages for a regular install, the source
    # tree's src/ for an editable one (its .pth file points there).
    package_root = package_dir.parent

    config_path = out_dir.resolve() / CONFIG_NAME
    data_dir = data_dir.resolve()
    sealed = data_dir / "sealed"
    trusted_dirs = [stdlib, platstdlib, site_packages, site_packages_plat, package_dir]
    for trusted in trusted_dirs:
        if sealed.is_relative_to(trusted) or trusted.is_relative_to(sealed):
            raise UsageError(f"the sealed folder {sealed} must lie outside the measured folder {trusted}")
    if config_path.is_relative_to(sealed):
        raise UsageError(f"--out {out_dir} must lie outside the sealed folder {sealed}")

    variables = {
        "enclave_size": config.enclave_size,
        "max_threads": str(config.max_threads),
        "isvprodid": str(config.product_id),
        "isvsvn": str(config.security_version),
        "debug": "true" if config.debug else "false",
        "listen_port": str(listen_port),
        "config_path": str(config_path),
        "data_dir": str(data_dir),
        "python_executable": str(executable),
        "python_argv0": str(argv0),
        "pyvenv_cfg": str(pyvenv_cfg) if in_venv else "",
        "python_stdlib": str(stdlib),
        "python_platstdlib": str(platstdlib),
        "python_shared_lib": str(shared_lib) if shared_lib else "",
        "python_libdir": str(shared_lib.parent) if shared_lib else "",
        "site_packages": str(site_packages),
        "site_packages_plat": str(site_packages_plat),
        "package_dir": str(package_dir),
        # the trusted code base, the one list the simulated code hash covers too: the template makes
        # each entry a trusted file (folders end in /), so the enclave can open no other package file
        "package_trusted": ",".join(TRUSTED_CODE_BASE),
        "package_root": str(package_root),
        "arch_libdir": _arch_libdir(),
    }
    for name, value in variables.items():
        _check_toml_safe(name, value)
    return variables


def write_inputs(config: EnclaveConfig, out_dir: Path) -> Path:
    """Write ``out_dir/enclave.json`` (the canonical configuration); return its path.

    An unchanged file is left alone, so that make does not re-sign for nothing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_NAME
    data = config.canonical()
    try:
        unchanged = path.read_bytes() == data
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        path.write_bytes(data)
    return path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gramine-manifest`` to the ``enclave-infer`` command's subcommands."""
    g = subparsers.add_parser(
        "gramine-manifest",
        help="write enclave.json and print the -D arguments for Gramine's gramine-manifest",
        description="Write OUT/enclave.json (the measured configuration) and print, one per line, "
        "the shell-quoted -D arguments for deploy/gramine/enclave-infer.manifest.template. Run it "
        "with the Python environment the enclave is to use: its paths go into the manifest.",
    )
    add_config(g)
    add_data_dir(g, "the enclave's data folder; sealed blobs go to DATA_DIR/sealed")
    g.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"loopback TCP port the enclave listens on (default {DEFAULT_PORT})",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path("build/gramine"),
        help="where enclave.json goes (default build/gramine)",
    )
    g.set_defaults(func=_gramine_manifest)


def _gramine_manifest(args: argparse.Namespace) -> int:
    config = load_config(args)
    # Computed (and checked) before anything is written.
    variables = gramine_variables(config, data_dir=args.data_dir, listen_port=args.port, out_dir=args.out)
    write_inputs(config, args.out)
    for name, value in variables.items():
        print(f"-D {shlex.quote(f'{name}={value}')}")
    return 0


# -- helpers -------------------------------------------------------------------------------------


def _check_enclave_size(size: str) -> None:
    # SGX requires the enclave's size (SECS.SIZE) to be a power of two.
    try:
        nbytes = int(size[:-1]) * _SIZE_UNITS[size[-1]]
    except (ValueError, KeyError, IndexError):
        raise UsageError(f"enclave_size must look like '4G' or '512M', got {size!r}") from None
    if nbytes <= 0 or nbytes & (nbytes - 1):
        raise UsageError(f"enclave_size must be a power of two for SGX (e.g. 2G, 4G, 8G), got {size!r}")


def _shared_libpython() -> Path | None:
    """libpython, when the interpreter links it dynamically (pyenv, python.org builds)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname:
        return None
    path = Path(libdir) / soname
    return path if path.exists() else None


def _arch_libdir() -> str:
    """Debian's multiarch library folder, e.g. /lib/x86_64-linux-gnu."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    return f"/lib/{multiarch}"


def _check_toml_safe(name: str, value: str) -> None:
    # The template puts values inside TOML basic strings, unescaped.
    if any(c in value for c in '"\\') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UsageError(f"{name} contains a quote, backslash or control character: {value!r}")
