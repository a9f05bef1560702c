"""What the experiments share: where their results go and how they are written.

Each experiment writes research/results/<name>.json (everything it measured, with the command,
date and versions) and research/results/<name>.md (the tables the docs quote). Cache keys are
shared with the benchmarks: benchmarks/cache_keys.py.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, data: dict) -> None:
    """research/results/<name>.json, indented one space."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def write_markdown(name: str, lines: list[str], echo: bool = False) -> None:
    """research/results/<name>.md from its lines (and the same text on stdout when `echo`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))
