"""Per-layer setup shared by the format searches: validation, ordering, prepared Hessian, target."""
from __future__ import annotations

import torch

from babai_kernels.contract import splits_into

from babai_quantizer.lattice import block_local_ordering, damp, fix_dead_inputs, prepare_hessian, validate_layer
from babai_quantizer.lattice.api import sweep_target
from babai_quantizer.lattice.sweep import PreparedHessian


def check_row_parallel_blocks(K: int, parts: int, group_size: int = 32) -> None:
    """ValueError unless K splits into `parts` equal blocks that are whole groups and 32-blocks."""
    if not splits_into(K, group_size, parts):
        raise ValueError(f"row_parallel_blocks: {parts!r} must be a positive divisor of K={K} with "
                         f"K/P a multiple of 32 and of the group size {group_size}")


def prepare_layer(W: torch.Tensor, H: torch.Tensor, *, ordering: str, damping: float,
                  row_parallel_blocks: int, G_cross: torch.Tensor | None, dtype: torch.dtype,
                  device) -> tuple[torch.Tensor, PreparedHessian]:
    """(target weights (N, K) float64 on the sweep device, prepared Hessian) for one layer.

    The target is lattice.api.sweep_target (dead inputs zeroed, or the Qronos float target). The order is block-local when
    row_parallel_blocks > 1 (see lattice.ordering.block_local_ordering).
    """
    H64 = H.to(device=device or H.device, dtype=torch.float64)
    perm = block_local_ordering(damp(fix_dead_inputs(H64)[0], damping)[0], ordering,
                                row_parallel_blocks)
    prep = prepare_hessian(H64, perm=perm, damping=damping, dtype=dtype, device=device)
    return sweep_target(W, prep, G_cross), prep


def validate_common(W, H, G_cross, damping) -> None:
    """The lattice core's input checks plus the damping argument."""
    validate_layer(W, H, None, None, G_cross)
    if not isinstance(damping, (int, float)) or not damping >= 0:
        raise ValueError(f"damping: expected a non-negative number, got {damping!r}")
