"""Checksummed asset cache: build into a temp folder, record sha256 of every file, verify on access.

An asset is a folder `<cache>/<name>/` made by a builder function. After a successful build the
folder holds `MANIFEST.json` = {"asset": name, "files": {relative path: {"sha256", "size"}}}.
`ensure()` verifies every listed file on each call and rebuilds the asset (logging why) when the
manifest or any file is missing or changed. Builds write to `<cache>/.tmp-<name>-*` and are renamed
into place only when complete, under a per-asset file lock, so a reader never sees a half-written asset.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("babai_quantizer.assets")

CACHE_ENV = "VLLM_BABAI_CACHE"
MANIFEST = "MANIFEST.json"


class AssetError(RuntimeError):
    """An asset could not be fetched or built; the message says which step failed and why."""


@dataclass(frozen=True)
class Asset:
    """A named cache folder and the function that fills an empty folder with its files."""

    name: str
    build: Callable[[Path], None]
    description: str = ""


def cache_dir() -> Path:
    """The cache root: $VLLM_BABAI_CACHE, else ~/.cache/vllm-babai (created if missing)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-babai").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(asset_name: str, folder: Path) -> dict:
    """Checksum every file under `folder` (except the manifest) and write MANIFEST.json."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    if not files:
        raise AssetError(f"asset {asset_name!r}: the build produced no files")
    manifest = {"asset": asset_name, "files": {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_folder(folder: Path) -> list[str]:
    """Problems with an asset folder (missing manifest, missing/resized/changed files); [] if intact."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return [f"{folder / MANIFEST}: missing"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{folder / MANIFEST}: unreadable ({e})"]
    problems = []
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{path}: size {path.stat().st_size}, manifest says {expected['size']}")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    return problems


@contextlib.contextmanager
def _locked(root: Path, name: str):
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(asset: Asset, root: Path) -> None:
    """Run the builder in a temp folder, checksum it, and swap it in place of `<root>/<name>`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=root))
    trash = root / f".old-{tmp.name}"
    try:
        asset.build(tmp)
        write_manifest(asset.name, tmp)
        final = root / asset.name
        if final.exists():
            final.rename(trash)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)


def ensure(asset: Asset, root: Path | None = None, force: bool = False) -> Path:
    """Return `<root>/<name>` after verifying it; (re)build it first if forced, missing or corrupt."""
    root = Path(root) if root is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / asset.name
    with _locked(root, asset.name):
        if force:
            log.info("asset %r: rebuilding (forced)", asset.name)
        elif not folder.exists():
            log.info("asset %r: not in cache %s, building", asset.name, root)
        else:
            problems = verify_folder(folder)
            if not problems:
                return folder
            log.warning("asset %r: cache is corrupt, rebuilding: %s", asset.name, "; ".join(problems))
        _build(asset, root)
        problems = verify_folder(folder)
        if problems:
            raise AssetError(f"asset {asset.name!r}: fails verification right after building: {problems}")
        log.info("asset %r: ready at %s", asset.name, folder)
        return folder
