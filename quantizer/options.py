"""`QuantizeOptions`: everything that decides the quantized weights (the CLI's options, minus paths)."""
from __future__ import annotations

from dataclasses import dataclass

from babai_kernels.contract import GPTQ_BITS, SSQR_BITS
from babai_quantizer.lattice.reduction import parse_method

FORMATS = ("ssqr", "hptq", "hrtn", "gptq", "rtn")
ORDERINGS = ("act", "min-pivot", "identity")
ALGORITHMS = ("gptq", "babai")
BITS = {"ssqr": SSQR_BITS, "gptq": GPTQ_BITS, "rtn": GPTQ_BITS}   # formats with integer bits
TARGET_BITS_FORMATS = ("hptq", "hrtn")
SCALE_INITS = ("mse", "rms", "absmax")      # ssqr (formats/ssqr.py)
RATE_MODES = ("closest", "cap")             # ssqr (formats/ssqr.py)
GROUPED_FORMATS = ("ssqr", "gptq", "rtn")
SSQR_GROUP_SIZES = (192, 128, 64, 32)       # the CLI's ssqr default: the largest dividing every K (measured best g192)
ALLOCATIONS = ("uniform", "fisher")         # hptq/hrtn bits per linear (quantizer/allocation.py)


def parse_col_steps(spec: str) -> float:
    """'none' → 0, 'ldl' → 1 (α ∝ D^{-1/2}), 'ldl<p>' → p (α ∝ D^{-p/2}); ValueError naming col_steps."""
    if spec == "none":
        return 0.0
    if isinstance(spec, str) and spec.startswith("ldl"):
        try:
            power = float(spec[3:]) if spec[3:] else 1.0
        except ValueError:
            power = -1.0
        if 0 < power <= 2:
            return power
    raise ValueError(f"col_steps: expected 'none', 'ldl' or 'ldl<p>' with 0 < p ≤ 2, got {spec!r}")


@dataclass
class QuantizeOptions:
    """Options of one quantization run; `validate()` raises ValueError naming the field (the
    CLI's flag is the field name with dashes: target_bits → --target-bits)."""

    format: str = "ssqr"
    bits: int = 4
    target_bits: float | None = None       # hptq/hrtn
    group_size: int = 64
    outlier_rate: float = 0.01              # ssqr
    ordering: str = "act"
    algorithm: str = "gptq"                 # gptq format: GPTQ sweep, or Babai back-to-front (same codes)
    damping: float = 0.01
    float_target: bool = False
    true_sequential: bool = True
    row_parallel_blocks: int = 8
    skip: tuple[str, ...] = ()              # modules kept in 16 bit (babai_kernels.contract.matches_skip)
    device: str = "cpu"
    dtype: str = "float32"                  # dtype of the quantization sweep
    reduce: str = "none"                    # hptq: lattice basis reduction before Babai ("lll", "bkz-<B>")
    scale_init: str = "mse"                 # ssqr: group-scale shape before the row multiplier (SCALE_INITS)
    rate_mode: str = "closest"              # ssqr: outlier count closest to rate·K, or capped at it (RATE_MODES)
    col_steps: str = "none"                 # hptq/hrtn: per-column steps α ∝ D^{-1/2} ("ldl", "ldl<p>")
    allocation: str = "uniform"             # hptq/hrtn: every linear at target_bits, or "fisher" (allocation.py)
    allocation_span: float = 1.5            # fisher: a linear's target stays within ± this many bits of the mean

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} not in {list(FORMATS)}")
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering: {self.ordering!r} not in {list(ORDERINGS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: {self.algorithm!r} not in {list(ALGORITHMS)}")
        if self.algorithm == "babai" and self.format != "gptq":
            raise ValueError(f"algorithm: 'babai' needs format 'gptq' (its clipped grid and scales), "
                             f"got format {self.format!r}")
        if self.format in TARGET_BITS_FORMATS:
            if self.target_bits is None or not float(self.target_bits) > 0:
                raise ValueError(f"target_bits: {self.format} needs a positive target, got {self.target_bits!r}")
        elif self.bits not in BITS[self.format]:
            raise ValueError(f"bits: {self.bits!r} not in {list(BITS[self.format])} for format {self.format}")
        if self.group_size <= 0:
            raise ValueError(f"group_size: must be positive, got {self.group_size}")
        if not 0 <= self.outlier_rate < 1:
            raise ValueError(f"outlier_rate: must be in [0, 1), got {self.outlier_rate}")
        if self.damping < 0:
            raise ValueError(f"damping: must be ≥ 0, got {self.damping}")
        if self.row_parallel_blocks < 1:
            raise ValueError(f"row_parallel_blocks: must be ≥ 1, got {self.row_parallel_blocks}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: {self.dtype!r} not in ['float32', 'float64']")
        if self.scale_init not in SCALE_INITS:
            raise ValueError(f"scale_init: {self.scale_init!r} not in {list(SCALE_INITS)}")
        if self.rate_mode not in RATE_MODES:
            raise ValueError(f"rate_mode: {self.rate_mode!r} not in {list(RATE_MODES)}")
        parse_method(self.reduce)
        parse_col_steps(self.col_steps)
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation: {self.allocation!r} not in {list(ALLOCATIONS)}")
        if not self.allocation_span > 0:
            raise ValueError(f"allocation_span: must be > 0 bits, got {self.allocation_span!r}")
        if self.allocation != "uniform" and self.format not in TARGET_BITS_FORMATS:
            raise ValueError(f"allocation: {self.allocation!r} needs format 'hptq' or 'hrtn', got {self.format!r}")
        if self.col_steps != "none" and self.format not in TARGET_BITS_FORMATS:
            raise ValueError(f"col_steps: {self.col_steps!r} needs format 'hptq' or 'hrtn', got {self.format!r}")
        if self.col_steps != "none" and self.reduce != "none":
            raise ValueError(f"col_steps: {self.col_steps!r} needs reduce 'none' (the plain basis)")
        if self.reduce != "none" and self.format != "hptq":
            raise ValueError(f"reduce: {self.reduce!r} needs format 'hptq' (one scale per matrix, so every row "
                             f"shares the basis), got format {self.format!r}")

    @property
    def sweep_group_size(self) -> int:
        """Columns per scale group as the layout sees them (HPTQ/HRTN chunk on 32-column blocks)."""
        return self.group_size if self.format in GROUPED_FORMATS else 32
