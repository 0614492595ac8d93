"""Build the image's root file system from pinned inputs only: build/image/rootfs/ and rootfs.tar.

Inputs, all pinned in image/: Debian bookworm packages at the versions of debian.lock (mmdebstrap,
--variant=essential plus python3.11), the wheels of requirements.lock (hashes checked, wheels only,
no dependency resolution), enclave-infer's own wheel built from the commit (`git archive HEAD`, so
uncommitted changes never enter an image) with the setuptools of tools.lock, and enclave.toml.
SOURCE_DATE_EPOCH is the commit's time unless the environment sets it.

No byte-code: every __pycache__ is removed (Debian's py3compile writes them for the standard library)
and the entrypoint sets PYTHONDONTWRITEBYTECODE. Python then compiles in memory at each start, which
costs start-up time but leaves nothing to the marshal module's determinism, and the root is
read-only in the VM anyway.

    python image/build_rootfs.py OUT            # OUT/rootfs, OUT/rootfs.tar, OUT/rootfs.json
    python image/build_rootfs.py OUT --relock   # ... and rewrite image/debian.lock from what was installed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import locks
import reprotar
from locks import lock_lines, wheel_for
from reprotar import sha256

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITE = "bookworm"
# The archive's suites; which mirror serves them is the build machine's (host_archives): every
# package is pinned by version and checked against Debian's signed indexes, so a mirror changes
# nothing in the image, and it is not recorded in any artifact.
SUITES = [("debian", f"{SUITE} {SUITE}-updates"), ("debian-security", f"{SUITE}-security")]
APT_SOURCES = Path("/etc/apt/sources.list.d")


def host_archives() -> dict[str, str]:
    """``{"debian": URI, "debian-security": URI}``: the archives this machine's apt is set up with
    (its deb822 ``.sources`` files), or DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR from the environment."""
    found: dict[str, str] = {}
    for sources in sorted(APT_SOURCES.glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    found.setdefault(uri.rstrip("/").rpartition("/")[2], uri.rstrip("/"))
    for name, variable in (("debian", "DEBIAN_MIRROR"), ("debian-security", "DEBIAN_SECURITY_MIRROR")):
        if os.environ.get(variable):
            found[name] = os.environ[variable].rstrip("/")
    missing = [name for name, _ in SUITES if name not in found]
    if missing:
        raise SystemExit(
            f"build_rootfs: no {' or '.join(missing)} archive in {APT_SOURCES}/*.sources:"
            " set DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR"
        )
    return found


def mirror_lines() -> list[str]:
    archives = host_archives()
    return [f"deb {archives[name]} {suite} main" for name, suites in SUITES for suite in suites.split()]


# What the image needs beyond Debian's Essential set. media-types satisfies python3.11's
# "media-types | mime-support" (mime-support would pull mailcap and with it all of Perl).
# libstdc++6: onnxruntime's extension links the system's (manylinux wheels may).
PACKAGES = ["python3.11", "media-types", "libstdc++6"]
# Documentation, manual pages and translations are not installed (copyright files are).
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
]  # fmt: skip
UID = GID = 10001
USER = "enclave-infer"
VENV = "/opt/enclave-infer"
DATA_DIR = "/var/lib/enclave-infer"
SEALED_DIR = DATA_DIR + "/sealed"
CONFIG = "/etc/enclave-infer/enclave.toml"
ENTRYPOINT = [VENV + "/bin/enclave-infer", "serve"]
CMD = [
    "--host", "0.0.0.0", "--port", "8080", "--data-dir", DATA_DIR, "--config", CONFIG,
    "--owner-public-key", SEALED_DIR + "/owner.key.pub",
]  # fmt: skip
ENV = {
    "PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": DATA_DIR,
    "LANG": "C.UTF-8",
}
PORT = 8080
PREFS = "etc/apt/preferences.d/lock.pref"  # the lock as apt preferences, during the build only


def say(text: str) -> None:
    print(f"build_rootfs: {text}", file=sys.stderr, flush=True)


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], check=True, text=True, stdout=subprocess.PIPE, env=env, cwd=cwd
    )
    return done.stdout


def source_date_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(run("git", "-C", ROOT, "log", "-1", "--format=%ct").strip())


def build_own_wheel(cache: Path, dist: Path, epoch: int) -> Path:
    """enclave-infer's wheel from the commit, with the locked setuptools and no build isolation."""
    buildenv = cache.parent / "buildenv"
    if not (buildenv / "bin" / "python").exists():
        run(sys.executable, "-m", "venv", "--without-pip", buildenv)
    setuptools = wheel_for(cache, next(r for r in lock_lines("tools.lock") if r.startswith("setuptools==")))
    pip_wheel = wheel_for(cache, next(r for r in lock_lines("tools.lock") if r.startswith("pip==")))
    pip = [str(buildenv / "bin" / "python"), f"{pip_wheel}/pip", "--disable-pip-version-check", "--quiet"]
    env = {"PATH": os.environ["PATH"], "SOURCE_DATE_EPOCH": str(epoch), "PIP_CONFIG_FILE": "/dev/null",
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(cache.parent)}  # fmt: skip
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(setuptools)], check=True, env=env)
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "--wheel-dir", str(dist), str(src)],
            check=True, env={**env, "TMPDIR": tmp},
        )  # fmt: skip
    (wheel,) = dist.glob("enclave_infer-*.whl")
    return wheel


def debian_lock() -> dict[str, str]:
    path = HERE / "debian.lock"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in lock_lines("debian.lock"))
    return {name: version for name, version in pairs}


def mmdebstrap(rootfs: Path, epoch: int, lock: dict[str, str]) -> None:
    """Debian's part of the tree; with a lock, apt prefers exactly its versions (priority 1001)."""
    with tempfile.TemporaryDirectory() as tmp:
        prefs = Path(tmp) / "lock.pref"
        prefs.write_text(
            "".join(
                f"Package: {n}\nPin: version {v}\nPin-Priority: 1001\n\n" for n, v in sorted(lock.items())
            )
        )
        argv = [
            "mmdebstrap", "--mode=root", "--variant=essential", "--format=directory", "--quiet",
            "--aptopt=APT::Install-Recommends \"false\"",
            # merged /usr made by mmdebstrap's hook (symlinks and usr-is-merged), not by the usrmerge
            # package, which would bring Perl
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            *[f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES],
            f"--include={','.join(PACKAGES)}",
            f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp {prefs} "$1/{PREFS}"',
            SUITE, str(rootfs), *mirror_lines(),
        ]  # fmt: skip
        log = rootfs.parent / "logs" / "mmdebstrap.log"  # logs/: not an artifact, not compared
        log.parent.mkdir(exist_ok=True)
        with log.open("w") as f:
            done = subprocess.run(
                argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
            )
        if done.returncode:
            sys.exit(f"build_rootfs: mmdebstrap failed (status {done.returncode}); see {log}")


def installed(rootfs: Path) -> dict[str, str]:
    out = run("/usr/sbin/chroot", rootfs, "dpkg-query", "-W", "-f", "${Package}=${Version}\n")
    return dict(line.split("=", 1) for line in out.splitlines())


def install_python(rootfs: Path, cache: Path, own_wheel: Path) -> None:
    """A venv on Debian's python3.11 at VENV, and the locked wheels in it, installed by the locked pip
    run from its wheel inside the image (so scripts point at the image's interpreter)."""
    run("/usr/sbin/chroot", rootfs, "/usr/bin/python3.11", "-m", "venv", "--without-pip", VENV)
    staging = rootfs / "tmp" / "wheels"
    staging.mkdir()
    requirements = lock_lines("requirements.lock")
    for req in requirements:
        shutil.copy(wheel_for(cache, req), staging)
    shutil.copy(own_wheel, staging)
    pip_wheel = wheel_for(cache, next(r for r in lock_lines("tools.lock") if r.startswith("pip==")))
    shutil.copy(pip_wheel, staging)
    version = own_wheel.name.split("-")[1]
    own = f"enclave-infer=={version} --hash=sha256:{sha256(own_wheel)}"
    (staging / "requirements.txt").write_text("\n".join([*requirements, own]) + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "PIP_CONFIG_FILE": "/dev/null", "LANG": "C.UTF-8"}  # fmt: skip
    subprocess.run(
        ["/usr/sbin/chroot", str(rootfs), f"{VENV}/bin/python", f"/tmp/wheels/{pip_wheel.name}/pip",
         "install",
         "--quiet", "--disable-pip-version-check", "--no-index", "--find-links", "/tmp/wheels",
         "--require-hashes", "--only-binary=:all:", "--no-deps", "--no-compile", "--no-cache-dir",
         "-r", "/tmp/wheels/requirements.txt"],
        check=True, env=env,
    )  # fmt: skip
    shutil.rmtree(staging)


def configure(rootfs: Path) -> None:
    """The service's user, configuration, folders and entrypoint description; host leftovers out."""
    etc = rootfs / "etc"
    with (etc / "passwd").open("a") as f:
        f.write(f"{USER}:x:{UID}:{GID}:enclave-infer:{DATA_DIR}:/usr/sbin/nologin\n")
    with (etc / "group").open("a") as f:
        f.write(f"{USER}:x:{GID}:\n")
    if (etc / "shadow").exists():
        with (etc / "shadow").open("a") as f:
            f.write(f"{USER}:!:1::::::\n")
    (etc / "enclave-infer").mkdir()
    shutil.copy(HERE / "enclave.toml", rootfs / CONFIG.lstrip("/"))
    os.chmod(rootfs / CONFIG.lstrip("/"), 0o644)
    data = rootfs / DATA_DIR.lstrip("/")
    data.mkdir(mode=0o700)
    os.chown(data, UID, GID)
    share = rootfs / "usr/local/share/enclave-infer"
    share.mkdir(parents=True)
    entry = {"entrypoint": ENTRYPOINT, "cmd": CMD, "env": ENV, "user": f"{UID}:{GID}", "port": PORT,
             "data_dir": DATA_DIR, "sealed_dir": SEALED_DIR, "config": CONFIG}  # fmt: skip
    (share / "entrypoint.json").write_text(json.dumps(entry, indent=2) + "\n")
    # Written by mmdebstrap from the build machine, or by apt for the build: not part of the image.
    for leftover in ("etc/hostname", "etc/resolv.conf", PREFS):
        (rootfs / leftover).unlink(missing_ok=True)
    for node in (rootfs / "dev").iterdir():
        if node.is_dir() and not node.is_symlink():
            shutil.rmtree(node)
        else:
            node.unlink()
    for cache in ("var/cache/ldconfig/aux-cache", "var/lib/dpkg/available-old", "var/lib/dpkg/status-old",
                  "var/cache/debconf/config.dat-old", "var/cache/debconf/templates.dat-old"):  # fmt: skip
        (rootfs / cache).unlink(missing_ok=True)
    for folder in ("tmp", "run", "var/tmp"):
        for entry_path in (rootfs / folder).iterdir():
            shutil.rmtree(entry_path) if entry_path.is_dir() else entry_path.unlink()
    # No way up from the service's user: the set-user-ID and set-group-ID bits go (su, newgrp,
    # unix_chkpwd in Essential's set); the service never needs them.
    for path in rootfs.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            say(f"removed the set-id bit of /{path.relative_to(rootfs)}")
    pycache = [p for p in rootfs.rglob("__pycache__") if p.is_dir()]
    for p in pycache:
        shutil.rmtree(p)
    say(f"removed {len(pycache)} __pycache__ folders")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--relock", action="store_true", help="write image/debian.lock from this build")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "image-cache" / "wheels")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("build_rootfs: run as root (mmdebstrap --mode=root, chroot)")
    started = time.monotonic()
    epoch = source_date_epoch()
    out: Path = args.out.resolve()
    if (out / "SOURCE_DATE_EPOCH").exists() or (out / "rootfs").exists():
        shutil.rmtree(out)  # a previous build's folder: every artifact is made again, none left stale
    out.mkdir(parents=True, exist_ok=True)
    rootfs = out / "rootfs"
    say(f"SOURCE_DATE_EPOCH={epoch}")
    locks.download(args.cache, "requirements.lock")
    locks.download(args.cache, "tools.lock", for_image=False)
    own_wheel = build_own_wheel(args.cache, out / "dist", epoch)
    say(f"{own_wheel.name} sha256 {sha256(own_wheel)}")
    lock = {} if args.relock else debian_lock()
    if not lock and not args.relock:
        sys.exit("build_rootfs: image/debian.lock is missing: run with --relock once")
    mmdebstrap(rootfs, epoch, lock)
    got = installed(rootfs)
    if args.relock:
        header = (
            f"# generated by image/build_rootfs.py --relock ({SUITE}); Debian packages at these versions\n"
        )
        (HERE / "debian.lock").write_text(header + "".join(f"{n}={v}\n" for n, v in sorted(got.items())))
        say(f"wrote image/debian.lock: {len(got)} packages")
    elif got != lock:
        diff = sorted(set(got.items()) ^ set(lock.items()))
        sys.exit(f"build_rootfs: installed packages differ from image/debian.lock: {diff[:10]}")
    install_python(rootfs, args.cache, own_wheel)
    configure(rootfs)
    reprotar.clamp_mtimes(rootfs, epoch)
    reprotar.write_tar_file(rootfs, out / "rootfs.tar", epoch)
    (out / "SOURCE_DATE_EPOCH").write_text(f"{epoch}\n")
    info = {
        "source_commit": run("git", "-C", ROOT, "rev-parse", "HEAD").strip(),
        "source_date_epoch": epoch,
        "suite": SUITE,
        "suites": [suite for _, suites in SUITES for suite in suites.split()],
        "debian_packages": got,
        "wheel": {"name": own_wheel.name, "sha256": sha256(own_wheel)},
        "rootfs_tar_sha256": sha256(out / "rootfs.tar"),
        "entrypoint": ENTRYPOINT, "cmd": CMD, "env": ENV, "user": f"{UID}:{GID}", "port": PORT,
        "locks": {name: sha256(HERE / name) for name in ("debian.lock", "requirements.lock", "tools.lock")},
    }  # fmt: skip
    (out / "rootfs.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    say(
        f"rootfs.tar {(out / 'rootfs.tar').stat().st_size / 1e6:.1f} MB in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
