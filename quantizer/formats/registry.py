"""One quantize function per checkpoint format, each returning a `FormatResult`.

    FORMAT_QUANTIZERS[options.format](W, H, G, options, row_parallel_blocks) -> FormatResult

ssqr, hptq, hrtn: the clipping-free searches of this package. gptq: classic clipped GPTQ (or the
same integers by Babai back-to-front, `options.algorithm == "babai"`); rtn: round-to-nearest on
the same clipped grid and MSE scales. Both clipped formats are stored in the standard GPTQ layout
(babai_kernels.gptq), static groups in original column order.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from babai_kernels.gptq import pack_gptq
from babai_quantizer import lattice
from babai_quantizer.babai_layer import quantize_layer_babai
from babai_quantizer.formats.hptq import quantize_hptq, quantize_hrtn
from babai_quantizer.formats.result import FormatResult, effective_bits
from babai_quantizer.formats.ssqr import quantize_ssqr
from babai_quantizer.options import QuantizeOptions

Quantizer = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", QuantizeOptions, int], FormatResult]


def _sweep_kwargs(W: torch.Tensor, options: QuantizeOptions) -> dict:
    return dict(damping=options.damping, dtype=getattr(torch, options.dtype), device=W.device)


def _ssqr(W, H, G, options: QuantizeOptions, blocks: int) -> FormatResult:
    return quantize_ssqr(W, H, bits=options.bits, group_size=options.group_size, outlier_rate=options.outlier_rate,
                         ordering=options.ordering, row_parallel_blocks=blocks, G_cross=G,
                         scale_init=options.scale_init, rate_mode=options.rate_mode, **_sweep_kwargs(W, options))


def _hptq(W, H, G, options: QuantizeOptions, blocks: int) -> FormatResult:
    return quantize_hptq(W, H, target_bits=options.target_bits, ordering=options.ordering,
                         row_parallel_blocks=blocks, G_cross=G, reduce=options.reduce, col_steps=options.col_steps,
                         **_sweep_kwargs(W, options))


def _hrtn(W, H, G, options: QuantizeOptions, blocks: int) -> FormatResult:
    return quantize_hrtn(W, H, target_bits=options.target_bits, row_parallel_blocks=blocks,
                         damping=options.damping, col_steps=options.col_steps, ordering=options.ordering)


def _clipped_result(W: torch.Tensor, codes, scales, q, error, bound, trace_d, options: QuantizeOptions
                    ) -> FormatResult:
    tensors = pack_gptq(codes, scales, bits=options.bits)
    return FormatResult(options.format, tensors, q.float().cpu(), error, bound,
                        effective_bits(tensors, *W.shape), None, {"trace_D": trace_d}, clipped=True)


def _gptq(W, H, G, options: QuantizeOptions, blocks: int) -> FormatResult:
    """GPTQ (act-order sweep, static groups in original column order), or the same by Babai
    back-to-front; `blocks` does not apply (global order; the GPTQ layout has no permutation)."""
    if options.algorithm == "babai":
        r = quantize_layer_babai(W, H, bits=options.bits, group_size=options.group_size, ordering=options.ordering,
                                 G_cross=G, **_sweep_kwargs(W, options))
        return _clipped_result(W, r.codes, r.scales, r.q, r.error, r.bound, r.trace_D, options)
    r = lattice.quantize_layer(W, H, bits=options.bits, group_size=options.group_size, grid="clip",
                               ordering=options.ordering, groups_in="original", G_cross=G, **_sweep_kwargs(W, options))
    return _clipped_result(W, r.codes, r.scales, r.q, r.error, r.bound, r.trace_D, options)


def _rtn(W, H, G, options: QuantizeOptions, blocks: int) -> FormatResult:
    """Round-to-nearest on the clipped grid and MSE scales; its error is measured on the damped H
    and it has no bound or tr(D)."""
    scales = lattice.group_scales(W, options.bits, options.group_size)
    S = scales.repeat_interleave(options.group_size, dim=1)
    codes, q, _ = lattice.rtn_quantize(W, S, lattice.make_grid("clip", options.bits))
    Hd, _ = lattice.damp(H.double(), options.damping)
    return _clipped_result(W, codes, scales, q, lattice.achieved_error(W, q, Hd), None, None, options)


FORMAT_QUANTIZERS: dict[str, Quantizer] = {"ssqr": _ssqr, "hptq": _hptq, "hrtn": _hrtn, "gptq": _gptq, "rtn": _rtn}
