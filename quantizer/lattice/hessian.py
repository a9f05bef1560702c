"""Hessian preparation: dead inputs, damping, Cholesky with automatic retry.

H is the (K, K) input Gram matrix XᵀX of one linear layer (K = input features).
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


class CholeskyError(RuntimeError):
    """The damped Hessian could not be factored even after all retries."""


def fix_dead_inputs(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's dead-input rule: where diag(H) == 0 set H[j, j] = 1 (callers zero W[:, j]).

    Returns (H_fixed (K, K) same dtype, dead (K,) bool).
    """
    dead = torch.diagonal(H) == 0
    H = H.clone()
    H[dead, dead] = 1.0
    return H, dead


def damp(H: torch.Tensor, rel: float = 0.01) -> tuple[torch.Tensor, float]:
    """H + λI with λ = rel · mean(diag H). Returns (H_damped, λ)."""
    lam = float(rel * torch.diagonal(H).mean())
    Hd = H.clone()
    Hd.diagonal().add_(lam)
    return Hd, lam


def cholesky_with_retry(H: torch.Tensor, rel: float = 0.01, *,
                        factor: Callable[[torch.Tensor], T] | None = None,
                        growth: float = 10.0, max_tries: int = 8) -> tuple[T, torch.Tensor, float]:
    """Factor damp(H, rel); on failure retry with rel·growth, rel·growth², … (logged).

    `factor` maps the damped H to its factor(s) and raises torch.linalg.LinAlgError (or returns
    non-finite values) on failure; default: the lower Cholesky factor L (L Lᵀ = H_damped).
    Returns (factor(H_damped), H_damped, rel_used). Raises CholeskyError after `max_tries`.
    """
    factor = factor or torch.linalg.cholesky
    for attempt in range(max_tries):
        Hd, _ = damp(H, rel)
        try:
            out = factor(Hd)
            tensors = out if isinstance(out, tuple) else (out,)
            if all(torch.isfinite(t).all() for t in tensors if isinstance(t, torch.Tensor)):
                if attempt:
                    log.warning("Cholesky succeeded after %d retries with damping rel=%g", attempt, rel)
                return out, Hd, rel
        except torch.linalg.LinAlgError:
            pass
        new_rel = rel * growth if rel > 0 else 1e-6
        log.warning("Cholesky failed with damping rel=%g; retrying with rel=%g", rel, new_rel)
        rel = new_rel
    raise CholeskyError(f"H: Cholesky failed after {max_tries} tries (last damping rel={rel / growth:g})")
