"""Collect benchmarks/gpu_check.sh's stage files into gpu_<gpu>.{json,md}.

    python3 -m benchmarks.gpu_report --stage-dir DIR --out benchmarks/results

Reads DIR/status.tsv (stage, exit code, seconds, timeout) and DIR/<stage>.json ({"stage",
"dry_run", "info", "rows"}, benchmarks/gpu_stages.py; an e2e stage writes the same shape), and
writes one JSON with every stage and a Markdown report: versions and route, the goal lines of
issue 21 (kernel speedups per shape, model decode speedups of the e2e stage, quantizer time),
then one table per stage (its rows' keys as columns).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

GOALS = [  # (stage, case, rows' label key, label wanted (None: every label, the worst decides), M, speedup)
    ("speed", "ssqr-4bit", "shape", "4096->14336", 1, 3.0),
    ("speed", "hptq-3.3", "shape", None, 1, 1.5),
    ("e2e", "ssqr-w4", "mode", "compiled", 1, 2.0),      # model decode tokens/s, batch 1 (m = batch)
    ("e2e", "hptq-3.3", "mode", "compiled", 1, 2.0),
]
QUANTIZE_GOAL_S = 300


def collect(directory: Path) -> dict:
    """{"date", "stages": {name: {"rc", "seconds", "timeout", "info", "rows", "dry_run"}}}."""
    stages = {}
    status = directory / "status.tsv"
    for line in status.read_text().splitlines() if status.is_file() else []:
        name, rc, seconds, limit = line.split("\t")
        stages[name] = dict(rc=int(rc), seconds=int(seconds), timeout=int(limit), info={}, rows=[])
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        entry = stages.setdefault(data.get("stage", path.stem), dict(rc=None, seconds=None, timeout=None))
        entry.update(info=data.get("info", {}), rows=data.get("rows", []), dry_run=data.get("dry_run"))
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), stages=stages)


def goal_lines(result: dict) -> list[str]:
    """One line per goal: the measured speedup(s) and PASS / MISS, or why there is none."""
    if any(s.get("dry_run") for s in result["stages"].values()):
        return ["dry run: nothing was measured on a GPU"]
    lines = []
    for stage, case, key, label, m, goal in GOALS:
        rows = [r for r in result["stages"].get(stage, {}).get("rows", [])
                if r.get("case") == case and r.get("m") == m and r.get("speedup") is not None]
        judged = [r for r in rows if label is None or r.get(key) == label]
        what = f"{case} ≥ {goal}x bf16 at M={m}" + (f" ({key} {label})" if label else f" on every {key}")
        if not judged:
            got = ", ".join(f"{r.get(key)} {r['speedup']:.2f}x" for r in rows)
            failed = result["stages"].get(stage, {}).get("info", {}).get("compile_failed", {}).get(case)
            lines.append(f"{what}: not measured{f' (measured: {got})' if got else ''}"
                         f"{f'; compile failed: {failed}' if failed else ''}")
            continue
        worst = min(r["speedup"] for r in judged)
        got = ", ".join(f"{r.get(key)} {r['speedup']:.2f}x" for r in judged)
        lines.append(f"{what}: {got}: {'PASS' if worst >= goal else 'MISS'}")
    info = result["stages"].get("quantizer", {}).get("info", {})
    for key, value in info.items():
        if key.endswith("_model_seconds_x32"):
            fmt = key.removesuffix("_model_seconds_x32")
            lines.append(f"quantize {fmt}, 32 layers (extrapolated from one): {value:.0f} s "
                         f"(goal ≤ {QUANTIZE_GOAL_S} s): {'PASS' if value <= QUANTIZE_GOAL_S else 'MISS'}")
    return lines


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def to_markdown(result: dict) -> str:
    stages = result["stages"]
    env = stages.get("env", {}).get("info", {})
    dry = any(s.get("dry_run") for s in stages.values())
    lines = [f"# GPU check{' (DRY RUN: nothing ran on a GPU)' if dry else ''}: {env.get('gpu') or 'no GPU'}",
             "", f"{result['date']} · python {env.get('python')} · torch {env.get('torch')} · triton "
             f"{env.get('triton')} · kernels launched by **{env.get('route')}** (AOT bundle: "
             f"{env.get('bundle_variants')} cubins from Triton {env.get('bundle_triton')}) · "
             "command `bash benchmarks/gpu_check.sh`", "", "## Goals (issue 21)", ""]
    lines += [f"- {g}" for g in goal_lines(result)]
    lines += ["", "## Stages", "", "| stage | exit | seconds | timeout |", "|---|---|---|---|"]
    lines += [f"| {name} | {s.get('rc')} | {s.get('seconds')} | {s.get('timeout')} |" for name, s in stages.items()]
    for name, s in stages.items():
        if name == "env":
            continue
        lines += ["", f"## {name}", ""]
        if s.get("info"):
            lines += [" · ".join(f"{k} {_cell(v)}" for k, v in s["info"].items()), ""]
        rows = s.get("rows", [])
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report_name(result: dict) -> str:
    """gpu_h200 on an H200, else gpu_<device name>, gpu_dry_run without a GPU."""
    gpu = result["stages"].get("env", {}).get("info", {}).get("gpu") or "dry_run"
    slug = "h200" if "H200" in gpu else gpu.lower().replace(" ", "_").replace("/", "_")
    return f"gpu_{slug}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = collect(args.stage_dir)
    name = report_name(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{name}.md").write_text(to_markdown(result))
    print("\n".join(goal_lines(result)))
    print(f"wrote {args.out}/{name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
