"""Facts benchmarks/serving_cpu.py reads off files: tensor bytes from safetensors headers, and the
babai plugin's and vLLM's kernel / resident-bytes lines from a server log."""
from __future__ import annotations

import re
from pathlib import Path

from babai_kernels.common import safetensors_headers

KERNEL_LINE = re.compile(r"babai kernel for (\S+) (\d+)x(\d+)(?: \([^)]*\))?: (\S+)")   # "(bfloat16, cpu)": chooser.py
RESIDENT_LINE = re.compile(r"babai resident bytes: (\d+) over (\d+) weights \(([\d.]+) bits/weight\)")
VLLM_KERNEL_LINE = re.compile(r"Using (\w+) for (mixed-precision linear|\w+LinearMethod)")
PLUGIN_NOTE_LINE = re.compile(r"\] (babai: .*)$", re.MULTILINE)   # e.g. codes widened to a kernel's width


# --- weight bytes from safetensors headers ------------------------------------------------------

def tensor_bytes(folder: Path) -> dict[str, tuple[list[int], int]]:
    """name -> (shape, bytes) of every tensor in the folder's safetensors files (headers only)."""
    return {name: (info["shape"], info["data_offsets"][1] - info["data_offsets"][0])
            for name, info in safetensors_headers(folder).items()}


def linear_weights(model_dir: Path) -> dict[str, int]:
    """Decoder-layer linear -> weight count, from the unquantized model (the linears every format quantizes)."""
    return {name.removesuffix(".weight"): shape[0] * shape[1]
            for name, (shape, _) in tensor_bytes(model_dir).items()
            if name.startswith("model.layers.") and name.endswith(".weight") and len(shape) == 2}


def on_disk_linear_bytes(folder: Path, linears: dict[str, int], suffixes: tuple[str, ...] | None = None) -> int:
    """Bytes of the tensors stored under the linears' names (only `suffixes`, when given)."""
    total = 0
    for name, (_, nbytes) in tensor_bytes(folder).items():
        module, _, suffix = name.rpartition(".")
        if module in linears and (suffixes is None or suffix in suffixes):
            total += nbytes
    return total


# --- server log ---------------------------------------------------------------------------------

def parse_server_log(text: str) -> dict:
    """Kernel choices and resident bytes from a server log (None/[] where the lines are absent)."""
    kernels = sorted({(m[1], int(m[2]), int(m[3]), m[4]) for m in KERNEL_LINE.finditer(text)})
    vllm_kernels = sorted({(m[1], m[2]) for m in VLLM_KERNEL_LINE.finditer(text)})
    resident = [(int(m[1]), int(m[2])) for m in RESIDENT_LINE.finditer(text)]
    return {
        "kernels": [{"format": f, "shape_NxK": f"{n}x{k}", "kernel": kernel} for f, n, k, kernel in kernels],
        "vllm_kernels": [{"kernel": k, "for": what} for k, what in vllm_kernels],
        "plugin_notes": sorted({m[1].strip() for m in PLUGIN_NOTE_LINE.finditer(text)}),
        "resident_bytes": sum(b for b, _ in resident) if resident else None,
        "resident_weights": sum(w for _, w in resident) if resident else None,
        "resident_lines": len(resident),
    }
