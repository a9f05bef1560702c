"""Fetching upstream packages with their ordinary clients (pip, apt-get, dpkg-deb)."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .cache import AssetError

log = logging.getLogger("babai_quantizer.assets")


def run_command(cmd: list[str], what: str, cwd: Path) -> None:
    """Run `cmd` in `cwd`; raise AssetError naming `what` with the tail of its output on failure."""
    if shutil.which(cmd[0]) is None:
        raise AssetError(f"{what}: command {cmd[0]!r} not found on PATH")
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise AssetError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))


def pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel of `requirement` (no dependencies) into `dest`; return its path."""
    run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 requirement, "-d", str(dest)], f"downloading {requirement} with pip", dest)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"pip download {requirement}: expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def apt_download(package: str, dest: Path) -> Path:
    """Download the Debian package `package` into `dest` (running `apt-get update` once if root
    and the package is unknown); return the .deb path."""
    what = f"downloading Debian package {package} with apt-get"
    try:
        run_command(["apt-get", "download", package], what, dest)
    except AssetError as first:
        if os.geteuid() != 0:
            raise AssetError(f"{first}\n(hint: run `sudo apt-get update` and retry)") from None
        run_command(["apt-get", "update"], "apt-get update", dest)
        run_command(["apt-get", "download", package], what, dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise AssetError(f"apt-get download {package}: expected one .deb in {dest}, found {debs}")
    return debs[0]


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack the files of `deb` under `dest` with dpkg-deb; return `dest`."""
    run_command(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}", deb.parent)
    return dest
