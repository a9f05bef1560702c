"""Result files name paths as any machine can read them: relative to the repository, or under the
cache folder as `~/.cache/vllm-babai/...` (or `$VLLM_BABAI_CACHE/...` when that is set), never as this
machine's absolute paths. A writer passes its text through `portable` just before writing it:

    (RESULTS / "x.json").write_text(portable(json.dumps(result, indent=1)) + "\n")
"""
from __future__ import annotations

import os
from pathlib import Path

from babai_quantizer.assets.cache import CACHE_ENV, cache_dir

ROOT = Path(__file__).resolve().parent.parent


def portable(text: str) -> str:
    """`text` with the repository root dropped (paths become repository-relative) and the cache
    folder written as `~/.cache/vllm-babai` or `$VLLM_BABAI_CACHE`."""
    cache = "$" + CACHE_ENV if os.environ.get(CACHE_ENV) else "~/.cache/vllm-babai"
    prefixes = {str(ROOT) + "/": "", str(ROOT): ".", str(cache_dir()): cache}
    for prefix in sorted(prefixes, key=len, reverse=True):      # the longer (inner) folder first
        text = text.replace(prefix, prefixes[prefix])
    return text
