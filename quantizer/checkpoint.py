"""Write quantized checkpoints (babai or the GPTQ layout): a Hugging Face model folder (docs/format.md §1).

The folder is built in a temporary directory next to `dest` and renamed into place at the end,
so an interrupted or failed write never leaves a partial checkpoint at `dest`.
Depends on torch, safetensors and babai_kernels.contract (never on vllm).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from babai_kernels.contract import (CONFIG_NAME, INDEX_NAME, REPORT_NAME, SINGLE_SHARD_NAME, BabaiCheckpointConfig,
                                    GPTQCheckpointConfig)

# Files copied from `copy_from` next to the weights (whichever exist).
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)
TMP_MARK = ".tmp-"          # `.<dest name>.tmp-<pid>-<random>`: a folder being written


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


def write_checkpoint(dest: str | Path, *, hf_config: dict, tensors: dict[str, torch.Tensor],
                     config: BabaiCheckpointConfig | GPTQCheckpointConfig, copy_from: str | Path | None = None,
                     report: dict | None = None, overwrite: bool = False,
                     max_shard_bytes: int = 4 * 1024 ** 3) -> Path:
    """Write a quantized Hugging Face model folder at `dest` atomically and return its path.

    hf_config: the model's config.json as a dict (its `quantization_config` becomes
    `config.to_dict()`). tensors: every tensor of the model by checkpoint name (docs/format.md
    §2–3 for quantized layers, Hugging Face names otherwise). copy_from: folder whose tokenizer
    files and generation_config.json are copied. report: written as quant_report.json. The GPTQ
    layout also gets quantize_config.json, as GPTQ tools expect.
    Raises FileExistsError if `dest` exists and not `overwrite`; OSError (naming `dest`) if
    writing fails. On any failure or interruption (SIGINT, and SIGTERM where the caller turns it
    into an exception, as the CLI does) nothing is left at `dest` (an overwritten checkpoint is
    kept); temporary folders that a killed writer left beside `dest` are removed by the next write.
    """
    dest = Path(dest)
    if not isinstance(config, (BabaiCheckpointConfig, GPTQCheckpointConfig)):
        raise ValueError(f"config: expected a BabaiCheckpointConfig or GPTQCheckpointConfig, got {type(config).__name__}")
    extra_json = {"quantize_config.json": config.to_dict()} if isinstance(config, GPTQCheckpointConfig) else {}
    if not isinstance(hf_config, dict):
        raise ValueError(f"hf_config: expected a dict, got {type(hf_config).__name__}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes: must be positive, got {max_shard_bytes}")
    if copy_from is not None and not Path(copy_from).is_dir():
        raise ValueError(f"copy_from: {copy_from} is not a folder")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; pass overwrite=True to replace it")

    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = dest.parent / f".{dest.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # (mkdtemp would make it private: mode 0700)
    try:
        _write_weights(tmp, tensors, max_shard_bytes)
        full_config = {**hf_config, "quantization_config": config.to_dict()}
        (tmp / CONFIG_NAME).write_text(json.dumps(full_config, indent=2))
        for fname, content in extra_json.items():
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


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Remove `.<dest name>.tmp-<pid>-*` folders beside `dest` whose writing process is gone
    (a writer killed by SIGKILL or a power cut); return what was removed."""
    removed = []
    for tmp in dest.parent.glob(f".{dest.name}{TMP_MARK}*"):
        pid = tmp.name[len(f".{dest.name}{TMP_MARK}"):].split("-")[0]
        if tmp.is_dir() and not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
