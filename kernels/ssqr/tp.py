"""Tensor-parallel slicing of SSQR layers (docs/format.md §2, "Tensor parallelism").

All functions take and return the dict of the five SSQR tensors (CPU or device, any order of
rows); outputs are contiguous. Used by the vLLM plugin for TP shards and fused q/k/v, gate/up.
"""
from __future__ import annotations

import torch

from babai_kernels.contract import splits_into
from babai_kernels.ssqr.pack import dense_to_ell, ell_to_dense, ssqr_meta


def slice_rows(tensors: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Output rows [start, stop) (column-parallel split); perm and cap are kept."""
    n = ssqr_meta(tensors)[0]
    if not 0 <= start < stop <= n:
        raise ValueError(f"slice_rows: need 0 <= start < stop <= N={n}, got [{start}, {stop})")
    return {
        "qweight": tensors["qweight"][:, start:stop].contiguous(),
        "scales": tensors["scales"][:, start:stop].contiguous(),
        "perm": tensors["perm"],
        "outlier_cols": tensors["outlier_cols"][start:stop].contiguous(),
        "outlier_vals": tensors["outlier_vals"][start:stop].contiguous(),
    }


def slice_cols(tensors: dict[str, torch.Tensor], part: int, parts: int,
               layer: str = "layer") -> dict[str, torch.Tensor]:
    """Input-column part `part` of `parts` (row-parallel split); needs a block-local perm.

    Raises ValueError naming `layer` when the split is not allowed.
    """
    n, k, bits, group = ssqr_meta(tensors)
    if not 0 <= part < parts:
        raise ValueError(f"{layer}: part {part} not in [0, {parts})")
    width = k // parts
    if not splits_into(k, group, parts):
        raise ValueError(f"{layer}: K={k} cannot be split into {parts} parts that are multiples "
                         f"of group size {group} and of 32")
    perm = tensors["perm"].long()
    owner = perm // width
    local = bool((owner == torch.arange(k, device=perm.device) // width).all())
    if not local:
        raise ValueError(f"{layer}: perm is not block-local for {parts} input-column parts; "
                         f"it cannot be split row-parallel")
    lo, hi = part * width, (part + 1) * width
    dense = ell_to_dense(tensors["outlier_cols"].cpu(), tensors["outlier_vals"].cpu(), k)
    cols, vals = dense_to_ell(dense[:, lo:hi])
    device = tensors["qweight"].device
    return {
        "qweight": tensors["qweight"][lo * bits // 32:hi * bits // 32].contiguous(),
        "scales": tensors["scales"][lo // group:hi // group].contiguous(),
        "perm": (tensors["perm"][lo:hi] - lo).contiguous(),
        "outlier_cols": cols.to(device),
        "outlier_vals": vals.to(device),
    }


def _pad_cap(t: torch.Tensor, cap: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cap - t.shape[1])) if t.shape[1] < cap else t


def concat_rows(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate layers along N (fused q/k/v, gate/up); all must share perm, bits and group size."""
    if not parts:
        raise ValueError("concat_rows: no layers given")
    metas = [ssqr_meta(t) for t in parts]
    for i, (meta, t) in enumerate(zip(metas[1:], parts[1:]), start=1):
        if meta[1:] != metas[0][1:]:
            raise ValueError(f"concat_rows: layer {i} has (K, bits, group_size)={meta[1:]}, "
                             f"layer 0 has {metas[0][1:]}")
        if not torch.equal(t["perm"].cpu(), parts[0]["perm"].cpu()):
            raise ValueError(f"concat_rows: layer {i} has a different perm than layer 0 "
                             f"(fused siblings must share it)")
    cap = max(t["outlier_cols"].shape[1] for t in parts)
    return {
        "qweight": torch.cat([t["qweight"] for t in parts], dim=1),
        "scales": torch.cat([t["scales"] for t in parts], dim=1),
        "perm": parts[0]["perm"],
        "outlier_cols": torch.cat([_pad_cap(t["outlier_cols"], cap) for t in parts]),
        "outlier_vals": torch.cat([_pad_cap(t["outlier_vals"], cap) for t in parts]),
    }
