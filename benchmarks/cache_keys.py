"""Cache keys shared by the benchmarks and the experiments (research/): what a cached result was
computed from, so a re-run re-uses it only while its settings and the code behind it are the same.

    stable_hash(obj)          16 hex digits of a JSON-able value (settings, keys)
    code_version(patterns)    16 hex digits of the source files matching globs relative to the repository
    cached_json(path, fn)     the JSON at `path`, or fn()'s result written there
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from babai_quantizer.fingerprint import source_digest

ROOT = Path(__file__).resolve().parent.parent


def stable_hash(obj) -> str:
    """16-hex hash of a JSON-able value (keys sorted, so dicts hash by content)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def code_version(patterns: list[str]) -> str:
    """16-hex hash of the named source files (globs relative to the repository root): each file's
    repository-relative path and bytes, in pattern order, sorted within a pattern."""
    return source_digest(ROOT, patterns)


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON stored at `path`, or compute() written there and returned."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result))
    return result
