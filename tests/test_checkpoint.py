"""quantizer/checkpoint.py: folder layout, sharding, atomic write, overwrite and error handling."""
import errno
import json

import pytest
import torch
from safetensors import safe_open

from babai_quantizer import checkpoint
from babai_kernels.contract import BabaiCheckpointConfig, config_from_dict, read_quantization_config
from babai_quantizer.checkpoint import write_checkpoint

QC = {"quant_method": "babai", "version": 1, "format": "ssqr", "bits": 4, "group_size": 32,
      "outlier_rate": 0.01, "modules_to_not_convert": ["lm_head"]}
CFG = BabaiCheckpointConfig.from_dict(QC, "QC")
HF = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}


def _tensors():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 8, generator=g, dtype=torch.float32)
    return {
        "model.embed_tokens.weight": emb,
        "lm_head.weight": emb,  # tied: shares storage with the embedding
        "layer.qweight": torch.randint(-2**31, 2**31 - 1, (4, 16), generator=g, dtype=torch.int32),
        "layer.scales": torch.randn(1, 16, generator=g).half(),
        "layer.outlier_cols": torch.randint(0, 32, (16, 2), generator=g).to(torch.int16),
        "layer.code_lengths": torch.randint(1, 12, (5,), generator=g).to(torch.uint8),
    }


def _read_all(folder):
    """All tensors of a folder, following the index when there is one."""
    index = folder / checkpoint.INDEX_NAME
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else [checkpoint.SINGLE_SHARD_NAME])
    out = {}
    for f in files:
        with safe_open(str(folder / f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_single_shard_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"tok": 1}')
    (src / "generation_config.json").write_text('{"eos_token_id": 2}')
    (src / "model.safetensors").write_text("not copied")
    dest = tmp_path / "out" / "ckpt"
    tensors = _tensors()
    write_checkpoint(dest, hf_config=HF, tensors=tensors, config=CFG,
                              copy_from=src, report={"bits_per_weight": torch.tensor(4.25).item()})
    assert (dest / "tokenizer.json").read_text() == '{"tok": 1}'
    assert (dest / "generation_config.json").exists()
    assert not (dest / checkpoint.INDEX_NAME).exists()
    config = json.loads((dest / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["quantization_config"] == CFG.to_dict()
    assert json.loads((dest / "quant_report.json").read_text()) == {"bits_per_weight": 4.25}
    loaded = _read_all(dest)
    assert loaded.keys() == tensors.keys()
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), k
    assert read_quantization_config(dest) == CFG
    assert _leftovers(dest.parent, "ckpt") == []


def test_sharded_with_index(tmp_path):
    tensors = _tensors()
    dest = tmp_path / "ckpt"
    write_checkpoint(dest, hf_config=HF, tensors=tensors, config=CFG,
                              max_shard_bytes=300)
    index = json.loads((dest / checkpoint.INDEX_NAME).read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and index["weight_map"].keys() == tensors.keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for f in files:
        with safe_open(str(dest / f), "pt") as h:
            sizes = [h.get_tensor(k).numel() * h.get_tensor(k).element_size() for k in h.keys()]
        assert sum(sizes) <= 300 or len(sizes) == 1
    loaded = _read_all(dest)
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())


def test_refuses_to_overwrite_then_overwrites(tmp_path):
    dest = tmp_path / "ckpt"
    write_checkpoint(dest, hf_config=HF, tensors=_tensors(), config=CFG)
    with pytest.raises(FileExistsError, match=str(dest)):
        write_checkpoint(dest, hf_config=HF, tensors={"a": torch.ones(2)}, config=CFG)
    assert "a" not in _read_all(dest)
    write_checkpoint(dest, hf_config=HF, tensors={"a": torch.ones(2)},
                              config=CFG, overwrite=True)
    assert list(_read_all(dest)) == ["a"]
    assert _leftovers(tmp_path, "ckpt") == []


@pytest.mark.parametrize("exists", [False, True])
def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch, exists):
    dest = tmp_path / "ckpt"
    if exists:
        write_checkpoint(dest, hf_config=HF, tensors={"a": torch.ones(2)}, config=CFG)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError, match=f"writing checkpoint {dest} failed.*No space left"):
        write_checkpoint(dest, hf_config=HF, tensors=_tensors(), config=CFG,
                                  overwrite=True)
    assert _leftovers(tmp_path, "ckpt") == []
    if exists:
        assert list(_read_all(dest)) == ["a"]  # the previous checkpoint is untouched
    else:
        assert not dest.exists()


def test_interrupt_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path / "ckpt", hf_config=HF, tensors=_tensors(), config=CFG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    ({"version": 3}, "version=3: unsupported babai format version"),
    ({"format": "awq"}, "format='awq': unknown babai format"),
    ({"quant_method": "awq"}, "quant_method='awq': expected 'babai'"),
    ({"bits": 5}, "bits=5: ssqr bits must be one of"),
    ({"group_size": 48}, "group_size=48: ssqr group_size must be"),
    ({"outlier_rat": 0.1}, "outlier_rat=0.1: unknown key"),
])
def test_bad_quantization_config(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        write_checkpoint(tmp_path / "x", hf_config=HF, tensors={}, config=config_from_dict({**QC, **change}, "x"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "config.json").write_text(json.dumps({**HF, "quantization_config": {**QC, **change}}))
    with pytest.raises(ValueError, match=f"config.json.*{message}"):
        read_quantization_config(tmp_path)


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="config.json: no such file"):
        read_quantization_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HF))
    with pytest.raises(ValueError, match="has no quantization_config"):
        read_quantization_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_quantization_config(tmp_path / "config.json")


def test_next_write_removes_temporaries_of_dead_writers(tmp_path):
    """A writer killed without cleanup (SIGKILL) leaves `.ckpt.tmp-<pid>-*`; the next write of the
    same checkpoint removes it, and never touches the folder of a writer that is still running."""
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".ckpt.tmp-{dead.pid}-deadbeef"
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-cafecafe"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    write_checkpoint(tmp_path / "ckpt", hf_config=HF, tensors=_tensors(), config=CFG)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", live.name])
