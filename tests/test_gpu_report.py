"""benchmarks/gpu_report.py (the GPU check's report) and benchmarks/triton_versions.py's join, on
made-up stage files."""
import json

from benchmarks.gpu_report import collect, goal_lines, report_name, to_markdown
from benchmarks.triton_versions import report


def _stage_dir(tmp_path, dry=False, ssqr=3.2, hptq=(1.6, 1.4), model_s=250.0):
    (tmp_path / "status.tsv").write_text("env\t0\t3\t45\nspeed\t0\t80\t120\nquantizer\t124\t75\t75\n")
    (tmp_path / "env.json").write_text(json.dumps(dict(stage="env", dry_run=dry, rows=[],
                                                       info=dict(gpu="NVIDIA H200", route="aot"))))
    rows = [dict(case="ssqr-4bit", shape="4096->14336", m=1, us=10.0, bf16_us=10 * ssqr, speedup=ssqr),
            dict(case="ssqr-4bit", shape="4096x4096", m=1, us=5.0, bf16_us=5.0, speedup=1.0)]
    rows += [dict(case="hptq-3.3", shape=s, m=1, us=1.0, bf16_us=h, speedup=h)
             for s, h in zip(("4096x4096", "14336->4096"), hptq)]
    (tmp_path / "speed.json").write_text(json.dumps(dict(stage="speed", dry_run=dry, rows=rows, info={})))
    e2e = [dict(case=v, mode=mode, m=b, tokens_per_s=100.0 * x, speedup=x)
           for v, mode, b, x in (("bf16", "compiled", 1, 1.0), ("ssqr-w4", "compiled", 1, 2.4),
                                 ("ssqr-w4", "eager", 1, 1.1), ("hptq-3.3", "eager", 1, 1.3),
                                 ("ssqr-w4", "compiled", 16, 1.5))]
    (tmp_path / "e2e.json").write_text(json.dumps(dict(
        stage="e2e", dry_run=dry, rows=e2e, info=dict(compile_failed={"hptq-3.3": "batch 1: Unsupported: x"}))))
    (tmp_path / "quantizer.json").write_text(json.dumps(dict(
        stage="quantizer", dry_run=dry, rows=[dict(format="gptq-w4g128", linear="q", seconds=1.0)],
        info={"gptq-w4g128_model_seconds_x32": model_s})))
    return tmp_path


def test_goals_pass_and_miss_on_the_measured_rows(tmp_path):
    result = collect(_stage_dir(tmp_path))
    lines = goal_lines(result)
    assert lines[0].startswith("ssqr-4bit") and "3.20x" in lines[0] and lines[0].endswith("PASS")
    assert "1.40x" in lines[1] and lines[1].endswith("MISS")            # worst HPTQ shape decides
    assert lines[2] == "ssqr-w4 ≥ 2.0x bf16 at M=1 (mode compiled): compiled 2.40x: PASS"   # batch 1, compiled
    assert lines[3] == ("hptq-3.3 ≥ 2.0x bf16 at M=1 (mode compiled): not measured (measured: eager 1.30x); "
                        "compile failed: batch 1: Unsupported: x")
    assert "250 s" in lines[4] and lines[4].endswith("PASS")
    assert result["stages"]["quantizer"]["rc"] == 124                   # its timeout is recorded
    md = to_markdown(result)
    assert "| quantizer | 124 | 75 | 75 |" in md and "**aot**" in md
    assert report_name(result) == "gpu_h200"


def test_a_dry_run_claims_nothing(tmp_path):
    result = collect(_stage_dir(tmp_path, dry=True))
    assert goal_lines(result) == ["dry run: nothing was measured on a GPU"]
    assert "DRY RUN" in to_markdown(result)


def test_version_table_shows_a_failed_compile_and_the_bundle(tmp_path):
    old = dict(triton="3.6.0", rows=[dict(label="ssqr 4-bit M=1", loop_instructions=960, per=3.75,
                                          registers=168, spill_bytes=0), dict(label="hptq K=4096 M=1", error="AttributeError: x")])
    new = dict(triton="3.9.0", rows=[dict(label="ssqr 4-bit M=1", loop_instructions=621, per=2.43,
                                          registers=168, spill_bytes=0),
                                     dict(label="hptq K=4096 M=1", loop_instructions=135, per=8.44,
                                          registers=40, spill_bytes=8)])
    bundle = dict(triton="3.9.0", bytes=10, variants=2, rows=[dict(label="ssqr 4-bit M=1", loop_instructions=621),
                                                              dict(label="hptq K=4096 M=1", loop_instructions=135)])
    for name, data in (("triton-3.6.0.json", old), ("triton-3.9.0.json", new), ("bundle.json", bundle)):
        (tmp_path / name).write_text(json.dumps(data))
    md = report(tmp_path, tmp_path / "out")
    assert "| ssqr 4-bit M=1 | 960 (3.75), 168, 0 | 621 (2.43), 168, 0 | 621 |" in md
    assert "| hptq K=4096 M=1 | does not compile (AttributeError: x) | 135 (8.44), 40, 8 | 135 |" in md
