"""docs/architecture.md stays true: every module its ownership table names exists, and so does each
name it says that module defines; every repository path the document quotes exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
BUILT = {"kernels/aot_sm90.zip"}      # build outputs the document names; not in a fresh clone


def table_rows() -> list[tuple[str, list[str], str]]:
    """(concept, [paths], name) of each row of the "Who owns what" table."""
    section = DOC.read_text(encoding="utf-8").split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("concept", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1]), cells[2].strip("`")))
    return rows


def defines(path: Path, name: str) -> bool:
    text = path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]", text, re.M) is not None


def test_table_is_parsed():
    assert len(table_rows()) >= 30


def test_every_module_in_the_table_exists():
    missing = [(concept, p) for concept, paths, _ in table_rows() for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_named_owner_defines_the_name():
    wrong = []
    for concept, paths, name in table_rows():
        if not name:
            continue
        files = [ROOT / p for p in paths if (ROOT / p).is_file() and p.endswith(".py")]
        if not any(defines(f, name) for f in files):
            wrong.append((concept, paths, name))
    assert not wrong, f"docs/architecture.md says these modules define names they do not: {wrong}"


def test_every_quoted_path_exists():
    text = DOC.read_text(encoding="utf-8")
    quoted = set(re.findall(r"\b((?:kernels|quantizer|vllm_babai|transformers_babai|serve|eval|benchmarks|research|"
                            r"tests|docs|scripts)/[\w./{},-]*\w)", text))
    missing = []
    for path in sorted(quoted):
        if "<" in path:
            continue
        m = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", path)       # kernels/choices/{cpu,cuda}.py
        expanded = [m.group(1) + part + m.group(3) for part in m.group(2).split(",")] if m else [path]
        missing += [p for p in expanded if p not in BUILT and not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md quotes paths that do not exist: {missing}"


# The layering the document states: what each room may not import (absolute imports only).
FORBIDDEN = {"kernels": ("babai_quantizer", "vllm", "vllm_babai", "transformers", "transformers_babai"),
             "vllm_babai": ("babai_quantizer", "transformers_babai"),
             "transformers_babai": ("babai_quantizer", "vllm", "vllm_babai")}


def test_rooms_import_only_downwards():
    import ast

    wrong = []
    for room, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                wrong += [(str(path.relative_to(ROOT)), n) for n in names if n.split(".")[0] in forbidden]
    assert not wrong, f"imports across the rooms of docs/architecture.md: {wrong}"


def test_serve_readme_lists_the_choosers_kernels():
    """serve/README.md's kernel table names every kernel of babai_kernels.chooser.KERNELS (and the
    plugin's VllmMixedPrecision), and nothing else."""
    from babai_kernels.chooser import KERNELS

    text = (ROOT / "serve" / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert table == {cls.__name__ for kernels in KERNELS.values() for cls in kernels} | {"VllmMixedPrecision"}
