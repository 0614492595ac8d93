"""The image's lock files as the build scripts read them, and the wheels they pin.

Build-side code (not in the package): ``build_rootfs.py`` and ``ray_image.py`` share it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The image's interpreter: Debian bookworm's python3.11, glibc 2.36, x86-64 (as lock_python.py).
TARGET = ["--implementation", "cp", "--python-version", "3.11", "--abi", "cp311"] + [
    x
    for tag in ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
    for x in ("--platform", tag)
]  # fmt: skip


def lock_lines(name: str) -> list[str]:
    """The pins of image/NAME, comments and blank lines left out."""
    return [
        line.split("#")[0].strip()
        for line in (HERE / name).read_text().splitlines()
        if line.split("#")[0].strip()
    ]


def download(cache: Path, lock: str, *, for_image: bool = True) -> None:
    """The wheels image/LOCK pins into CACHE (pip checks every hash; nothing is resolved): for the
    image's interpreter, or (``for_image=False``) for the one running the build."""
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "--only-binary=:all:", "--dest", str(cache), *(TARGET if for_image else []),
         "-r", str(HERE / lock)],
        check=True, env={**os.environ, "PIP_CONSTRAINT": ""},
    )  # fmt: skip


def wheel_for(cache: Path, requirement: str) -> Path:
    """The one wheel in CACHE for a ``name==version`` pin."""
    name, version = requirement.split()[0].split("==")
    prefix = f"{name.replace('-', '_')}-{version}-".lower()
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix)]
    if len(found) != 1:
        sys.exit(f"image: expected one wheel for {name}=={version} in {cache}, found {found}")
    return found[0]
