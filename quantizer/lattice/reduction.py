"""Lattice basis reduction before Babai (Birnick, arXiv 2508.01077 §3; issue 16), shared by a layer.

HPTQ has one scale s per matrix and no clipping, so every row of a layer is a CVP on the same basis
s·R: R (K, K) is the upper Cholesky factor of the damped Hessian in Babai order t = reverse(perm),
H_T = H[t][:, t] = RᵀR, its columns the basis vectors. A unimodular T with R·T reduced depends on R
only, so one reduction serves every row and every scale of HPTQ's search. Babai on the reduced basis
(paper Alg. 2; `reference.babai_reduced_reference` is the pseudocode):

    A = s·R·T;  y = R·w_t;  for j = K-1 … 0: z'_j = ROUND(⟨φ_j, y⟩ / ⟨φ_j, a_j⟩), y −= a_j z'_j;  z_t = T·z'

The fast form is the production GPTQ sweep on H' = Tᵀ H_T T (= AᵀA/s²) with weights T⁻¹w_t in GPTQ
order reverse(0..K-1) (so Babai runs in the reduced basis's own order), then z_t = T·z'
(`BasisReduction.hessian / weights / codes`; formats.hptq wires them).

fplll reduces integer bases. It gets round(c·R) with c = 2^precision_bits / min_j R_jj, i.e. the
shortest Gram–Schmidt length becomes 2^precision_bits units. T and T⁻¹ are exact whatever the rounding:
fplll applies each integer row operation on the basis also to U and to U⁻ᵀ (both start as I). The
rounding moves each basis vector by ≤ ½√w units (w: window size), i.e. by ≤ ½√w·2^-precision_bits of
the shortest Gram–Schmidt length (≤ 2.2·10⁻⁵ for w ≤ 2048 at 20 bits), far inside LLL's slack
(δ = 0.99, η = 0.51), so R·T is reduced up to that relative perturbation; the Gram–Schmidt lengths
and γ reported are recomputed in float64 from R·T itself, not from the integer basis.

Large K: reduction on consecutive windows of the Babai order. Window [a, b) reduces the projected block
R[a:b, a:b]; T = blockdiag(T_1, …, T_m). A window's operations mix only its own columns, so the span of
the columns before it, and with it every Gram–Schmidt length outside it, is unchanged: the windows are
independent (one pass, no overlap).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

DELTA = 0.99                      # Lovász constant
# Largest dimension reduced in one piece (full LLL at K = 1536 already takes 15–30 s on one core;
# windows keep the cost linear in K).
MAX_WINDOW = {"lll": 2048, "bkz": 1024}
MAX_ENTRY_BITS = 60               # integer basis entries must fit int64 with room to spare


def parse_method(method: str) -> tuple[str, int | None]:
    """'none' | 'lll' | 'bkz-<B>' (B ≥ 2 the BKZ block size) → (kind, B or None); ValueError naming `reduce`."""
    m = re.fullmatch(r"(none|lll|bkz-(\d+))", method) if isinstance(method, str) else None
    if m is None or (m.group(2) is not None and int(m.group(2)) < 2):
        raise ValueError(f"reduce: expected 'none', 'lll' or 'bkz-<B>' with block size B ≥ 2, got {method!r}")
    return (method, None) if m.group(2) is None else ("bkz", int(m.group(2)))


def babai_gamma(r: torch.Tensor) -> float:
    """Babai's relative bound (paper §3): γ ≤ sqrt(1 + max_j Σ_{j'≤j} r_{j'}² / r_j²).

    r: (K,) Gram–Schmidt lengths in Babai basis order (r[0] belongs to the first basis vector).
    """
    r2 = r.double().square()
    return float(torch.sqrt(1 + (torch.cumsum(r2, 0) / r2).max()))


def gram_schmidt_lengths(B: torch.Tensor) -> torch.Tensor:
    """(K,) float64 Gram–Schmidt lengths ‖b̃_j‖ of the columns of B (K, K): |diag| of its QR factor."""
    return torch.linalg.qr(B.double(), mode="r").R.diagonal().abs()


def _times_blocks(X: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """X (M, K) @ blockdiag(blocks), the blocks (w_i, w_i) consecutive along K; dtype of X."""
    out, a = torch.empty_like(X), 0
    for B in blocks:
        b = a + B.shape[0]
        out[:, a:b] = X[:, a:b] @ B.to(device=X.device, dtype=X.dtype)
        a = b
    return out


@dataclass
class BasisReduction:
    """One layer's reduction, in Babai-order coordinates; T = blockdiag(blocks) (K, K).

    order: (K,) int64 Babai order t = reverse(perm) (original column t[j] is basis vector j).
    blocks, blocks_inv: the windows' (w, w) int64 unimodular T_w and their exact inverses, consecutive
    along the Babai order. The reduced basis is R·T (T = I: no reduction).
    r_before, r_after: (K,) float64 Gram–Schmidt lengths of R and of R·T (D = r², tr(D) = Σ r²).
    method: 'lll' | 'bkz-<B>'; window: columns reduced together; seconds: wall time of reduce_basis
    (Cholesky, fplll, Gram–Schmidt of R·T).
    """

    order: torch.Tensor
    blocks: list[torch.Tensor]
    blocks_inv: list[torch.Tensor]
    r_before: torch.Tensor
    r_after: torch.Tensor
    method: str
    window: int
    seconds: float

    @property
    def T(self) -> torch.Tensor:
        """(K, K) int64 dense T (K² entries: for inspection at moderate K)."""
        return torch.block_diag(*self.blocks)

    @property
    def T_inv(self) -> torch.Tensor:
        """(K, K) int64 dense T⁻¹."""
        return torch.block_diag(*self.blocks_inv)

    def hessian(self, H: torch.Tensor) -> torch.Tensor:
        """H' = Tᵀ H_T T (K, K) float64 from the damped, symmetric H (K, K) in original order."""
        t = self.order.to(H.device)
        Y = _times_blocks(H.double()[t][:, t], self.blocks)        # H_T·T
        return _times_blocks(Y.T.contiguous(), self.blocks).T      # (H_T·T)ᵀ·T = Tᵀ·H_T·T (H_T symmetric)

    def weights(self, W: torch.Tensor) -> torch.Tensor:
        """(N, K) float64 reduced-basis weights: row n is T⁻¹ w_t."""
        return _times_blocks(W.double()[:, self.order.to(W.device)], [B.T for B in self.blocks_inv])

    def codes(self, z_red: torch.Tensor) -> torch.Tensor:
        """(N, K) int64 codes in original column order from reduced codes z' (N, K): z_t = T·z' (exact)."""
        z_t = _times_blocks(z_red.to(torch.int64), [B.T for B in self.blocks])
        z = torch.empty_like(z_t)
        z[:, self.order.to(z_red.device)] = z_t
        return z

    def stats(self) -> dict:
        """JSON-able summary: tr(D), γ before and after, max |T|, max |T⁻¹|, time."""
        return {"method": self.method, "window": self.window, "seconds": self.seconds,
                "trace_D_before": float(self.r_before.square().sum()),
                "trace_D_after": float(self.r_after.square().sum()),
                "gamma_before": babai_gamma(self.r_before), "gamma_after": babai_gamma(self.r_after),
                "max_abs_T": max(int(B.abs().max()) for B in self.blocks),
                "max_abs_T_inv": max(int(B.abs().max()) for B in self.blocks_inv),
                "identity": all(torch.equal(B, torch.eye(len(B), dtype=B.dtype)) for B in self.blocks)}


def _reduce_window(R: torch.Tensor, kind: str, block: int | None, precision_bits: int):
    """(T, T_inv) (w, w) int64 reducing the basis R (w, w) (columns; upper triangular, fp64) with fplll."""
    try:
        from fpylll import BKZ, GSO, LLL, IntegerMatrix
    except ImportError as e:
        raise ImportError("reduce: lattice reduction needs fpylll and cysignals "
                          "(pip install 'vllm-babai[reduce]')") from e

    w = R.shape[0]
    c = 2.0 ** precision_bits / float(R.diagonal().min())
    A = IntegerMatrix.from_matrix(torch.round(c * R.T).to(torch.int64).tolist())  # rows = basis vectors
    U, U_inv_t = IntegerMatrix.identity(w), IntegerMatrix.identity(w)
    M = GSO.Mat(A, U=U, UinvT=U_inv_t)        # fplll keeps A = U·A₀ and U_inv_t = U⁻ᵀ, exactly
    M.update_gso()
    lll = LLL.Reduction(M, delta=DELTA)
    lll()
    if kind == "bkz":
        BKZ.Reduction(M, lll, BKZ.Param(block_size=min(block, w), delta=DELTA,
                                       flags=BKZ.AUTO_ABORT | BKZ.MAX_LOOPS, max_loops=8))()

    def tensor(m):
        return torch.tensor(m.to_matrix([[0] * w for _ in range(w)]), dtype=torch.int64)

    # Rows of A are basis vectors: A = U·A₀, so the column basis is R·Uᵀ: T = Uᵀ, T⁻¹ = (Uᵀ)⁻¹ = U⁻ᵀ.
    return tensor(U).T.contiguous(), tensor(U_inv_t)


def reduce_basis(H: torch.Tensor, perm: torch.Tensor, method: str = "lll", *, window: int | None = 256,
                 precision_bits: int = 20) -> BasisReduction:
    """Reduce the Babai basis R of the damped Hessian H (K, K) in GPTQ order perm (K,) (Babai order reverse(perm)).

    method: 'lll' (δ = 0.99) or 'bkz-<B>' (LLL, then BKZ with block size B). window: reduce consecutive
    windows of this many Babai-order columns independently (the last may be shorter); None = all K at
    once. ValueError (naming the argument) for a bad method, a window larger than MAX_WINDOW for the
    method, or an H that is not positive definite.
    """
    kind, block = parse_method(method)
    if kind == "none":
        raise ValueError("reduce: 'none' has no reduction to compute")
    if not isinstance(H, torch.Tensor) or H.dim() != 2 or H.shape[0] != H.shape[1] \
            or not torch.isfinite(H).all():
        raise ValueError(f"H: expected a finite square (K, K) tensor, got "
                         f"{tuple(H.shape) if isinstance(H, torch.Tensor) else type(H)}")
    K = H.shape[0]
    width = K if window is None else window
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"window: expected a positive integer or None, got {window!r}")
    if min(width, K) > MAX_WINDOW[kind]:
        raise ValueError(f"window: {window!r} reduces {min(width, K)} columns at once (K={K}), more than "
                         f"'{kind}' handles ({MAX_WINDOW[kind]}); pass window ≤ {MAX_WINDOW[kind]}")
    if not isinstance(precision_bits, int) or not 8 <= precision_bits <= 40:
        raise ValueError(f"precision_bits: expected an integer in 8..40, got {precision_bits!r}")
    start = time.perf_counter()
    order = perm.flip(0).cpu()
    H_T = H.detach().double().cpu()[order][:, order]
    R, info = torch.linalg.cholesky_ex(H_T, upper=True)
    if info:
        raise ValueError(f"H: not positive definite after damping (Cholesky fails at Babai column "
                         f"{int(info) - 1} of {K}); raise the damping")
    spread = float(torch.log2(R.abs().max() / R.diagonal().min()))
    if spread + precision_bits > MAX_ENTRY_BITS:
        raise ValueError(f"H: basis entries span 2^{spread:.0f} of the shortest Gram–Schmidt length; with "
                         f"precision_bits={precision_bits} they exceed 2^{MAX_ENTRY_BITS} (raise the damping)")
    windows = [R[a:a + width, a:a + width] for a in range(0, K, width)]
    blocks, blocks_inv = zip(*(_reduce_window(Rw, kind, block, precision_bits) for Rw in windows))
    # A window's Gram–Schmidt lengths in R·T are those of its projected block R_w·T_w.
    r_after = torch.cat([gram_schmidt_lengths(Rw @ Tw.double()) for Rw, Tw in zip(windows, blocks)])
    return BasisReduction(order=order, blocks=list(blocks), blocks_inv=list(blocks_inv),
                          r_before=R.diagonal().clone(), r_after=r_after, method=method,
                          window=min(width, K), seconds=time.perf_counter() - start)
