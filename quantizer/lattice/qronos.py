"""Qronos-style float target (Birnick §5 / Qronos): lattice from the quantized model's inputs X̂,
target from the float model's outputs Xw.

With H = X̂ᵀX̂ + λI and G = X̂ᵀX, Babai on the lattice of H with target Xw is ordinary GPTQ on
    ŵ = H⁻¹ (G + λI) w   (per row),
because (ŵ − q)ᵀH(ŵ − q) = ‖Xw − X̂q‖² + λ‖w − q‖² + const: damping appends √λ·I rows to both
X and X̂. When X̂ = X, G + λI = H and ŵ = w (plain GPTQ/Babai).
"""
from __future__ import annotations

import torch


def float_target_weights(W: torch.Tensor, H_damped: torch.Tensor, G: torch.Tensor, lam: float) -> torch.Tensor:
    """Ŵ (N, K) in W's dtype. W: (N, K); H_damped: (K, K) = X̂ᵀX̂ + λI; G: (K, K) = X̂ᵀX; lam: λ."""
    Hd = H_damped.double()
    Gd = G.double().to(Hd.device)
    rhs = Gd @ W.double().to(Hd.device).T
    rhs += lam * W.double().to(Hd.device).T
    L = torch.linalg.cholesky(Hd)
    return torch.cholesky_solve(rhs, L).T.to(W.dtype).to(W.device)
