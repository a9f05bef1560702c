"""babai-quantize CLI: end to end on a tiny Llama, and every bad input → clear error, nothing written."""
from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from babai_quantizer.cli import build_parser, main, options_from_args
from tests.fixtures.tiny_checkpoint import save_tiny_tokenizer, tiny_llama_config

WORDS = ("it is a truth universally acknowledged that a single man in possession of a good fortune "
         "must be in want of a wife").split()
TEXT = " ".join(WORDS[(5 * i) % len(WORDS)] for i in range(800))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(save_tiny_tokenizer(folder))).save_pretrained(folder)
    (folder / "calib.txt").write_text(TEXT)
    return folder


def args(model_dir, out, *extra):
    return ["--model", str(model_dir), "--calib-text", str(model_dir / "calib.txt"), "--output", str(out),
            "--nsamples", "4", "--seqlen", "32", "--group-size", "32", "--format", "rtn", "--device", "cpu",
            *extra]


def test_cli_writes_checkpoint_and_report(model_dir, tmp_path, capsys):
    assert main(args(model_dir, tmp_path / "out")) == 0
    report = json.loads((tmp_path / "out" / "quant_report.json").read_text())
    assert report["totals"]["quantized_linears"] == 14
    # GPTQ 4-bit g32: 4 bits + fp16 scale/32 + 4-bit zero/32 per weight
    assert report["totals"]["effective_bits"] == pytest.approx(4 + 16 / 32 + 4 / 32)
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert "wrote" in capsys.readouterr().out


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--model", "--calib-text", "--output", "--format", "--bits", "--target-bits", "--group-size",
                "--outlier-rate", "--ordering", "--damping", "--float-target", "--nsamples", "--seqlen",
                "--device", "--seed", "--skip", "--row-parallel-blocks", "--overwrite", "--dtype", "--algorithm",
                "--threads", "--rate-mode", "--scale-init"):
        assert opt in text


def test_missing_model_path(tmp_path, capsys):
    assert main(args(tmp_path / "nope", tmp_path / "out")) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named(tmp_path, capsys, model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=400)).save_pretrained(gpt2)
    save_tiny_tokenizer(gpt2)
    (gpt2 / "calib.txt").write_text(TEXT)
    assert main(args(gpt2, tmp_path / "out")) == 2
    assert "GPT2LMHeadModel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_short_calibration_text(model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("a single man")
    argv = args(model_dir, tmp_path / "out")
    argv[argv.index("--calib-text") + 1] = str(short)
    assert main(argv) == 2
    assert "shorter than one window" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_left_alone_without_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(args(model_dir, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_full_disk_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import babai_quantizer.checkpoint as checkpoint

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    assert main(args(model_dir, tmp_path / "out")) == 2
    assert "No space left" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,message", [(["--threads", "0"], "--threads"),
                                           (["--algorithm", "babai", "--format", "ssqr"], "algorithm")])
def test_bad_threads_or_algorithm_is_named(model_dir, tmp_path, capsys, extra, message):
    assert main(args(model_dir, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--format", "ssqr", "--bits", "9"], "--bits: 9 not in [2, 3, 4] for format ssqr"),
    (["--format", "ssqr", "--bits", "8"], "--bits: 8 not in [2, 3, 4] for format ssqr"),
    (["--format", "gptq", "--bits", "9"], "--bits: 9 not in [2, 3, 4, 8] for format gptq"),
    (["--format", "hptq"], "--target-bits: hptq needs a positive target"),
    (["--format", "hptq", "--target-bits", "3.3", "--allocation-span", "0"], "--allocation-span: must be > 0"),
])
def test_bad_option_names_the_flag_before_loading_the_model(tmp_path, capsys, extra, message):
    missing_model = tmp_path / "no-such-model"   # options are checked first: the model is never read
    assert main(args(missing_model, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_while_writing_leaves_nothing_and_no_traceback(model_dir, tmp_path, capsys, monkeypatch,
                                                             signum, code, word):
    """Probe 3 and 6: a signal while the safetensors file is written removes the temporary folder."""
    import babai_quantizer.checkpoint as checkpoint

    def killed(*_a, **_k):
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(checkpoint, "save_file", killed)
    assert main(args(model_dir, tmp_path / "out")) == code
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_reduce_option_quantizes_hptq_and_is_refused_elsewhere(model_dir, tmp_path, capsys):
    pytest.importorskip("fpylll")
    out = tmp_path / "hptq"
    assert main(args(model_dir, out, "--format", "hptq", "--target-bits", "4.5", "--reduce", "lll")) == 0
    report = json.loads((out / "quant_report.json").read_text())
    assert report["options"]["reduce"] == "lll" and report["totals"]["bound_holds_where_unclipped"]
    assert main(args(model_dir, tmp_path / "x", "--format", "ssqr", "--reduce", "lll")) == 2
    assert "--reduce: 'lll' needs format 'hptq'" in capsys.readouterr().err
    assert main(args(model_dir, tmp_path / "y", "--format", "hptq", "--target-bits", "4", "--reduce", "bkz")) == 2
    assert "--reduce: expected 'none', 'lll' or 'bkz-<B>'" in capsys.readouterr().err


def test_ssqr_search_options_reach_the_quantizer(model_dir, tmp_path, capsys):
    out = tmp_path / "ssqr"
    assert main(args(model_dir, out, "--format", "ssqr", "--bits", "3", "--outlier-rate", "0.03",
                     "--rate-mode", "cap", "--scale-init", "rms", "--row-parallel-blocks", "1")) == 0
    report = json.loads((out / "quant_report.json").read_text())
    assert report["options"]["rate_mode"] == "cap" and report["options"]["scale_init"] == "rms"
    from safetensors.torch import load_file
    tensors = load_file(str(out / "model.safetensors"))
    for name, cols in tensors.items():
        if name.endswith("outlier_cols"):       # ELL width ≤ the cap round(rate·K)
            k = tensors[name.replace("outlier_cols", "perm")].numel()
            assert cols.shape[1] <= max(round(0.03 * k), 1)
    with pytest.raises(SystemExit):
        main(args(model_dir, tmp_path / "x", "--format", "ssqr", "--rate-mode", "exact"))
    assert "--rate-mode" in capsys.readouterr().err


def test_ssqr_defaults_are_the_measured_best(model_dir, tmp_path):
    """Without flags, ssqr runs capped rate, rms scales, one global order and the largest group size of
    SSQR_GROUP_SIZES dividing every input size of the model (read from its config.json)."""
    from babai_quantizer.cli import model_in_features
    from babai_quantizer.options import SSQR_GROUP_SIZES

    out = tmp_path / "ssqr-defaults"
    argv = args(model_dir, out, "--format", "ssqr", "--bits", "4")
    i = argv.index("--group-size")
    assert main(argv[:i] + argv[i + 2:]) == 0
    report = json.loads((out / "quant_report.json").read_text())
    ks = model_in_features(model_dir)
    expected = max(g for g in SSQR_GROUP_SIZES if all(k % g == 0 for k in ks))
    options = report["options"]
    assert (options["rate_mode"], options["scale_init"], options["row_parallel_blocks"]) == ("cap", "rms", 1)
    assert options["group_size"] == expected
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["group_size"] == expected


def test_hptq_defaults_to_per_column_steps_and_fisher_allocation(model_dir, tmp_path):
    from safetensors.torch import load_file

    for extra, expected in (((), True), (("--col-steps", "none"), False)):
        out = tmp_path / f"hptq{len(extra)}"
        assert main(args(model_dir, out, "--format", "hptq", "--target-bits", "4.5", *extra)) == 0
        names = load_file(str(out / "model.safetensors")).keys()
        assert any(n.endswith(".col_steps") for n in names) == expected
        report = json.loads((out / "quant_report.json").read_text())
        assert report["options"]["col_steps"] == ("ldl" if expected else "none")
        assert report["options"]["allocation"] == "fisher"           # the default plan, recorded per layer
        assert report["options"]["float_target"] is True             # hptq's default since issue 23
        targets = {n: e["target_bits"] for n, e in report["allocation"]["layers"].items()}
        assert set(targets) == set(report["layers"])
        for name, layer in report["layers"].items():
            assert layer["effective_bits"] == pytest.approx(targets[name], abs=0.05)
        assert report["totals"]["bound_holds_where_unclipped"]


@pytest.mark.parametrize("extra,expected", [(["--format", "hptq", "--target-bits", "3.3"], True),
                                            (["--format", "hptq", "--target-bits", "3.3", "--no-float-target"], False),
                                            (["--format", "hrtn", "--target-bits", "3.3"], False),
                                            (["--format", "gptq"], False), (["--format", "gptq", "--float-target"], True)])
def test_float_target_is_hptqs_default_only(extra, expected):
    assert options_from_args(build_parser().parse_args(extra)).float_target is expected
