"""What a checkpoint was computed from, as a short digest: caches of quantized checkpoints (the demo's,
the serving benchmarks') are keyed by it, so a checkpoint that older code wrote (other defaults, other
algorithms, another format version) is never served as if today's quantizer had written it.

    source_digest(root, patterns)   16 hex digits of the files matching globs under root
    quantizer_fingerprint()         source_digest of the code that decides a checkpoint's bytes
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Relative to the babai_quantizer and babai_kernels package folders: the quantizer and the on-disk contract.
QUANTIZER_SOURCES = ("**/*.py",)
KERNEL_SOURCES = ("contract.py", "common.py", "gptq.py", "hptq/pack.py", "hptq/huffman.py", "hptq/bits.py",
                  "ssqr/pack.py")


def source_digest(root: Path, patterns) -> str:
    """16-hex digest of the files under `root` matching the globs `patterns`: each file's root-relative
    path and bytes, in pattern order, sorted within a pattern."""
    h = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def quantizer_fingerprint() -> str:
    """16-hex digest of the babai_quantizer package and the kernels' contract and packers (this process's)."""
    import babai_kernels
    kernels = Path(babai_kernels.__file__).resolve().parent
    return source_digest(PACKAGE, QUANTIZER_SOURCES)[:8] + source_digest(kernels, KERNEL_SOURCES)[:8]
