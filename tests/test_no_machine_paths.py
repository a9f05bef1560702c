"""Committed results and docs name paths relative to the repository or the cache folder
(`~/.cache/vllm-babai`, `$VLLM_BABAI_CACHE`), never one machine's absolute paths (issue 25)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["README.md", "docs", "benchmarks/results", "research", "eval", "serve/README.md"]
MACHINE_PATH = re.compile(r"/root/|/work/")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", *CHECKED], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def machine_paths(path: str) -> list[str]:
    try:
        text = (ROOT / path).read_text(encoding="utf-8")
    except UnicodeDecodeError:      # images
        return []
    return [f"{path}:{i}: {line.strip()[:120]}" for i, line in enumerate(text.splitlines(), 1)
            if MACHINE_PATH.search(line)]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_no_machine_paths_in_committed_results_and_docs():
    found = [hit for f in tracked_files() for hit in machine_paths(f)]
    assert not found, "absolute paths of this machine in committed files:\n" + "\n".join(found)


def test_portable_rewrites_repository_and_cache_paths(tmp_path, monkeypatch):
    from benchmarks.portable import ROOT as REPO, portable

    monkeypatch.delenv("VLLM_BABAI_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    line = f"{REPO}/.venv/bin/python -m babai_quantizer --model {tmp_path}/.cache/vllm-babai/ckpt --output {REPO}"
    assert portable(line) == ".venv/bin/python -m babai_quantizer --model ~/.cache/vllm-babai/ckpt --output ."
    monkeypatch.setenv("VLLM_BABAI_CACHE", str(tmp_path / "elsewhere"))
    assert portable(f"{tmp_path}/elsewhere/serving-logs/a.log") == "$VLLM_BABAI_CACHE/serving-logs/a.log"
