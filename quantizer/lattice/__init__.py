"""Lattice core: GPTQ run back-to-front = Babai's nearest plane (arXiv 2507.18553, 2508.01077).

High level: `quantize_layer(W, H, bits=, group_size=, grid=, ...) -> LayerResult`.
Lower level (re-run sweeps with new scales without refactoring H):
`prepare_hessian` → `PreparedHessian`; `group_scales` / `step_group_index`; `sweep`;
`reduce_basis` (basis reduction shared by a layer's rows, for HPTQ).
"""
from .api import LayerResult, quantize_layer, validate_layer
from .bound import achieved_error, babai_bound
from .grids import ClippedGrid, OverflowGrid, UnboundedGrid, make_grid
from .hessian import CholeskyError, cholesky_with_retry, damp, fix_dead_inputs
from .ordering import block_local_ordering, ldl_diagonal, ordering, trace_D
from .qronos import float_target_weights
from .reduction import BasisReduction, babai_gamma, reduce_basis
from .rtn import rtn_quantize
from .scales import coordinate_scales, grid_range, group_scales, step_group_index
from .sweep import PreparedHessian, SweepResult, prepare_hessian, sweep

__all__ = [
    "LayerResult", "quantize_layer", "validate_layer", "achieved_error", "babai_bound",
    "ClippedGrid", "OverflowGrid", "UnboundedGrid", "make_grid", "CholeskyError",
    "cholesky_with_retry", "damp", "fix_dead_inputs", "block_local_ordering", "ldl_diagonal", "ordering", "trace_D",
    "float_target_weights", "BasisReduction", "babai_gamma", "reduce_basis", "rtn_quantize",
    "coordinate_scales", "grid_range", "group_scales",
    "step_group_index", "PreparedHessian", "SweepResult", "prepare_hessian", "sweep",
]
