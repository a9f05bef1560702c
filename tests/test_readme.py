"""The README stays a front door (issue 25): at most 160 lines, the two set-up commands first, and
every local link resolves to a file of the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = ["bash scripts/setup.sh && .venv/bin/python -m babai_serve.demo",
            "bash scripts/setup.sh && .venv/bin/python -m pytest -q"]


def test_readme_is_short():
    assert len(README.splitlines()) <= 160


def test_the_two_setup_commands_come_first():
    blocks = re.findall(r"```\w*\n(.*?)```", README, re.S)
    assert [b.strip() for b in blocks[:2]] == COMMANDS


def test_local_links_resolve():
    links = [t for t in re.findall(r"\]\(([^)]+)\)", README) if not re.match(r"https?:|#", t)]
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert links and not missing, f"README links to missing files: {missing}"
