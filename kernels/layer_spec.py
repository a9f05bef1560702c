"""What a kernel is asked to serve: one engine layer's `LinearSpec`, built by `shard_layer`.

Pure torch (no engine import), shared by every engine adapter (vllm_babai, the transformers
integration), so the loading rules and their errors are unit-testable without an engine. An engine
layer is one or more checkpoint modules ("siblings": q/k/v, gate/up, or just one); `shard_layer`
turns their full checkpoint tensors into this rank's `LinearSpec` for the kernel chooser
(babai_kernels.chooser):

    for each sibling: check tensors → keep this rank's output rows → (row-parallel) keep this
    rank's input columns → fuse siblings (SSQR: one matrix, shared perm; HPTQ: one part each).

Nothing is transcoded here: a kernel that needs the dense runtime layout (babai_kernels.runtime)
asks the spec for it (`LinearSpec.dense_layout`, built lazily, once per width), so no choice made
for one platform decides another's layout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from babai_kernels import runtime
from babai_kernels.contract import TENSOR_NAMES, BabaiCheckpointConfig
from babai_kernels.hptq import tp as hptq_tp
from babai_kernels.hptq.pack import hptq_meta
from babai_kernels.runtime import DenseResidual
from babai_kernels.ssqr import tp as ssqr_tp
from babai_kernels.ssqr.pack import ssqr_meta, unpack_ssqr


@dataclass(frozen=True)
class Format:
    """What the plugin needs from babai_kernels/ for one on-disk format (K: the layer's input features)."""

    name: str
    tensor_names: tuple[str, ...]
    rows: Callable[[dict, int, BabaiCheckpointConfig | None], int]  # validate for K (and config), return N
    slice_rows: Callable[[dict, int, int], dict]           # output rows [start, stop)
    slice_cols: Callable[[dict, int, int, str], dict]      # input-column part p of P; layer name
    fuse: Callable[[list[dict]], list[dict]]               # siblings -> parts whose outputs concatenate
    validate: Callable[["LinearSpec"], object]             # check every tensor (ValueError naming it);
    # what it decodes stays cached on the spec for the layout
    layout: Callable[["LinearSpec", int | None, str], DenseResidual]  # spec, dense bits (None: the format's
    # default), CPU kernel variant whose costs choose HPTQ's default widths -> the runtime layout


def _ssqr_rows(tensors: dict, k: int, config: BabaiCheckpointConfig | None) -> int:
    n, k_stored, _, _ = ssqr_meta(tensors, *((config.bits, config.group_size) if config else ()))
    if k_stored != k:
        raise ValueError(f"perm: K={k_stored} input features, the model expects {k}")
    return n


SSQR = Format("ssqr", TENSOR_NAMES["ssqr"], _ssqr_rows, ssqr_tp.slice_rows, ssqr_tp.slice_cols,
              lambda parts: [ssqr_tp.concat_rows(parts)], lambda spec: spec.ssqr_unpacked(),
              lambda spec, bits, isa: runtime.from_ssqr(spec.parts[0], spec.ssqr_unpacked()))
HPTQ = Format("hptq", TENSOR_NAMES["hptq"], lambda t, k, config: hptq_meta(t, k)["out_features"], hptq_tp.slice_rows,
              lambda t, part, parts, layer: hptq_tp.slice_cols(t, part, parts),
              list, lambda spec: spec.hptq_codes(),
              lambda spec, bits, isa: runtime.from_hptq_codes(spec.hptq_codes(), spec.parts, spec.shape[1], bits,
                                                              isa=isa))
FORMATS = {f.name: f for f in (SSQR, HPTQ)}


@dataclass
class LinearSpec:
    """What a kernel is asked to implement for one engine layer on this rank.

    parts: the format's tensors of this rank (SSQR: one fused dict; HPTQ: one per sibling), on
    the CPU; derived forms (runtime layouts, decoded HPTQ codes) are built on demand and cached.
    """

    format: str
    bits: int | None                     # the checkpoint's code bits (SSQR), None for HPTQ
    shape: tuple[int, int]               # (N, K) of this rank
    act_dtype: torch.dtype
    device: torch.device
    parts: list[dict[str, torch.Tensor]]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key, build: Callable[[], object]):
        """build() once per spec and key (a kernel's load-time form, shared by can_implement and
        the kernel's constructor)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def dense_layout(self, bits: int | None = None, isa: str | None = None) -> DenseResidual:
        """The runtime layout (dense codes + sparse residual), built on first use. bits: the dense
        width (HPTQ only; None: a width per 32 rows by the measured time of CPU kernel variant `isa`,
        runtime.hptq_dense_widths; None: the AVX-512 variant's). Layouts `isa` does not change are
        built once."""
        isa = isa if isa and self.format == HPTQ.name and bits is None else "avx512"
        return self.cached(("dense", bits, isa), lambda: FORMATS[self.format].layout(self, bits, isa))

    def ssqr_unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """SSQR: unpack_ssqr of the (fused) part — (z, scales, perm, outliers), validated — once."""
        return self.cached("ssqr_unpacked", lambda: unpack_ssqr(self.parts[0]))

    def hptq_codes(self) -> list[torch.Tensor]:
        """HPTQ: the integer codes (N_part, K) int32 of each part, decoded (and validated) once."""
        from babai_kernels.hptq.pack import decode_hptq
        return self.cached("hptq_codes", lambda: [decode_hptq(p, self.shape[1]) for p in self.parts])

    def stored_bytes(self) -> int:
        """Bytes of the format's tensors as the checkpoint stores them (this rank's part)."""
        return sum(t.numel() * t.element_size() for p in self.parts for t in p.values())


@dataclass
class Sibling:
    """Checkpoint tensors of one module of a vLLM layer and what this rank keeps of it.

    rows: this rank's output rows [start, stop) (None: all); full_rows: the module's number of
    output rows that the model expects.
    """

    module: str
    tensors: dict[str, torch.Tensor]
    rows: tuple[int, int] | None
    full_rows: int


def shard_layer(fmt: Format, siblings: list[Sibling], input_size: int, col_part: tuple[int, int] | None,
                device: torch.device, config: BabaiCheckpointConfig | None = None,
                act_dtype: torch.dtype = torch.float32) -> LinearSpec:
    """This rank's part of a layer, ready for the kernel chooser.

    input_size: full K of the layer; col_part: (p, P) for a row-parallel split, else None;
    config: the checkpoint's config, whose bits/group size the tensors must match.
    Raises ValueError naming the checkpoint module and tensor on any inconsistency.
    """
    local = []
    for s in siblings:
        missing = [n for n in fmt.tensor_names if n not in s.tensors]
        if missing:
            raise ValueError(f"{s.module}: checkpoint has no tensor {', '.join(f'{s.module}.{n}' for n in missing)} "
                             f"(format {fmt.name} needs {list(fmt.tensor_names)})")
        tensors = s.tensors
        try:
            n = fmt.rows(tensors, input_size, config)
            if n != s.full_rows:
                raise ValueError(f"tensors have N={n} output rows, the model expects {s.full_rows}")
            if s.rows is not None:
                tensors = fmt.slice_rows(tensors, *s.rows)
            k_local = input_size
            if col_part is not None and col_part[1] > 1:
                tensors = fmt.slice_cols(tensors, col_part[0], col_part[1], s.module)
                k_local = input_size // col_part[1]
        except ValueError as e:
            raise ValueError(f"{s.module}: {e}" if not str(e).startswith(s.module) else str(e)) from None
        local.append(tensors)
    layer = " + ".join(s.module for s in siblings)
    try:
        parts = fmt.fuse(local)
    except ValueError as e:
        raise ValueError(f"{layer}: {e}") from None
    rows = sum(s.rows[1] - s.rows[0] if s.rows else s.full_rows for s in siblings)
    spec = LinearSpec(fmt.name, config.bits if config is not None and fmt.name == "ssqr" else None,
                      (rows, k_local), act_dtype, device, parts)
    try:
        fmt.validate(spec)
    except ValueError as e:
        raise ValueError(f"{layer}: {e}") from None
    return spec
