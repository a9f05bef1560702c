"""Write and read vllm-babai checkpoints: a Hugging Face model folder (docs/format.md §1).

The folder is built in a temporary directory next to `dest` and renamed into place at the end,
so an interrupted or failed write never leaves a partial checkpoint at `dest`.
Depends on torch and safetensors only (never on vllm).
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

FORMAT_VERSION = 1
FORMATS = ("ssqr", "hptq")
SINGLE_SHARD_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
REPORT_NAME = "quant_report.json"
# Files copied from `copy_from` next to the weights (whichever exist).
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)


def validate_quantization_config(qc, source: str) -> dict:
    """Check a `quantization_config` dict against docs/format.md; return it.

    Raises ValueError naming `source` (a file or argument) and the offending value.
    """
    if not isinstance(qc, dict):
        raise ValueError(f"{source}: quantization_config must be a JSON object, got {type(qc).__name__}")
    if qc.get("quant_method") != "babai":
        raise ValueError(f"{source}: quant_method {qc.get('quant_method')!r} is not 'babai'")
    if qc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{source}: unsupported babai format version {qc.get('version')!r} "
                         f"(this reader knows version {FORMAT_VERSION})")
    fmt = qc.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"{source}: unknown babai format {fmt!r} (expected one of {list(FORMATS)})")
    if fmt == "ssqr":
        if qc.get("bits") not in (2, 3, 4):
            raise ValueError(f"{source}: ssqr bits {qc.get('bits')!r} not in [2, 3, 4]")
        g = qc.get("group_size")
        if not isinstance(g, int) or g <= 0 or g % 32:
            raise ValueError(f"{source}: ssqr group_size {g!r} must be a positive multiple of 32")
    skip = qc.get("modules_to_not_convert", [])
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"{source}: modules_to_not_convert must be a list of strings, got {skip!r}")
    return qc


def read_quantization_config(path: str | Path) -> dict:
    """The validated `quantization_config` of a checkpoint folder (or of its config.json file)."""
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{config_file}: no such file (not a checkpoint folder?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from None
    if "quantization_config" not in config:
        raise ValueError(f"{config_file}: has no quantization_config")
    return validate_quantization_config(config["quantization_config"], str(config_file))


def _shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split tensors, in insertion order, into groups of at most `max_shard_bytes` (a tensor larger
    than the limit gets a shard of its own). Tensors sharing storage are cloned (safetensors rule)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, seen = 0, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensors[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_SHARD_NAME), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))


def save_quantized_checkpoint(dest: str | Path, *, hf_config: dict, tensors: dict[str, torch.Tensor],
                              quantization_config: dict, copy_from: str | Path | None = None,
                              report: dict | None = None, overwrite: bool = False,
                              max_shard_bytes: int = 4 * 1024 ** 3) -> Path:
    """Write a babai checkpoint folder at `dest` (see write_model_folder) and return its path.

    tensors: every tensor of the model by its checkpoint name (docs/format.md §2–3 for quantized
    layers, usual Hugging Face names otherwise). quantization_config is validated first.
    """
    validate_quantization_config(quantization_config, "quantization_config")
    return write_model_folder(dest, hf_config=hf_config, tensors=tensors,
                              quantization_config=quantization_config, copy_from=copy_from,
                              report=report, overwrite=overwrite, max_shard_bytes=max_shard_bytes)


def write_model_folder(dest: str | Path, *, hf_config: dict, tensors: dict[str, torch.Tensor],
                       quantization_config: dict, copy_from: str | Path | None = None,
                       report: dict | None = None, overwrite: bool = False,
                       max_shard_bytes: int = 4 * 1024 ** 3,
                       extra_json: dict[str, dict] | None = None) -> Path:
    """Write a Hugging Face model folder at `dest` atomically and return its path.

    hf_config: the model's config.json as a dict (its `quantization_config` is replaced).
    copy_from: folder whose tokenizer files and generation_config.json are copied. report: written
    as quant_report.json. extra_json: more JSON files by name (e.g. GPTQ's quantize_config.json).
    Raises FileExistsError if `dest` exists and not `overwrite`; OSError (naming `dest`) if
    writing fails, in which case nothing is left at `dest` (an overwritten checkpoint is kept).
    """
    dest = Path(dest)
    if not isinstance(hf_config, dict):
        raise ValueError(f"hf_config: expected a dict, got {type(hf_config).__name__}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes: must be positive, got {max_shard_bytes}")
    if copy_from is not None and not Path(copy_from).is_dir():
        raise ValueError(f"copy_from: {copy_from} is not a folder")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; pass overwrite=True to replace it")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # (mkdtemp would make it private: mode 0700)
    try:
        _write_weights(tmp, tensors, max_shard_bytes)
        config = {**hf_config, "quantization_config": quantization_config}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for fname, content in (extra_json or {}).items():
            (tmp / fname).write_text(json.dumps(content, indent=2))
        if report is not None:
            (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=float))
        if copy_from is not None:
            for fname in COPIED_FILES:
                if (Path(copy_from) / fname).is_file():
                    shutil.copy2(Path(copy_from) / fname, tmp / fname)
        _move_into_place(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing checkpoint {dest} failed: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename `tmp` to `dest`; an existing `dest` is moved aside first and removed only after."""
    if not dest.exists():
        tmp.rename(dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
