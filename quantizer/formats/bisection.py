"""Batched bisection on a log-scale factor for a decreasing measurement.

Both clipping-free searches have the same shape: a positive factor `m` (SSQR: per-row scale
multiplier; HPTQ: the matrix scale) controls a measurement `f(m)` that falls as `m` grows
(outlier count; coded bits), and we want `f(m) ≈ target`. `LogBisection` keeps, for each of
`n` independent problems, a bracket `lo < x* ≤ hi` on `x = log m` with `f(lo) > target ≥ f(hi)`,
steps outward (with doubling steps) while a side is still open, halves the bracket otherwise, and remembers the
evaluated point closest to the target. All problems advance together, so one batched
evaluation per step serves every row.
"""
from __future__ import annotations

import math

import torch


class LogBisection:
    """Bracketing bisection in `x = log(m)` for `n` independent decreasing functions.

    x0: (n,) float64 start points; step: first outward step in log space while a side of the
    bracket is open (it doubles with each further outward step);
    target: (n,) float64 targets; tol: a point with |f − target| ≤ tol ends that problem;
    x_tol: a bracket narrower than this ends that problem; x_min, x_max: proposals stay inside,
    and a problem whose open side has reached the limit ends (its target is unreachable).
    slope: optional model slope df/dx (< 0). Then each step first tries the model step
    x_best − (f_best − target)/slope: taken outward while a side is open, and inside a closed
    bracket kept within its middle half (so the bracket still shrinks by ≥ ¼ per step).
    """

    def __init__(self, x0: torch.Tensor, target: torch.Tensor, *, tol: float,
                 step: float = math.log(2.0), x_tol: float = 1e-4,
                 x_min: float = -math.inf, x_max: float = math.inf, slope: float | None = None):
        self.x0 = x0.to(torch.float64).clamp(x_min, x_max)
        self.target = target.to(torch.float64)
        self.tol, self.step, self.x_tol = tol, step, x_tol
        self.x_min, self.x_max, self.slope = x_min, x_max, slope
        nan = torch.full_like(self.x0, math.nan)
        self.lo, self.hi = nan.clone(), nan.clone()       # f(lo) > target ≥ f(hi)
        self.best_x = self.x0.clone()
        self.best_f = torch.full_like(self.x0, math.inf)
        self.outward = torch.zeros_like(self.x0)          # evaluations with one side open
        self.steps = 0

    def propose(self) -> torch.Tensor:
        """(n,) points to evaluate next (log m)."""
        lo_open, hi_open = self.lo.isnan(), self.hi.isnan()
        x = (self.lo + self.hi) / 2
        step = self.step * torch.exp2((self.outward - 1).clamp_min(0))
        x = torch.where(hi_open & ~lo_open, self.lo + step, x)
        x = torch.where(lo_open & ~hi_open, self.hi - step, x)
        if self.slope is not None:
            model = self.best_x - (self.best_f - self.target) / self.slope
            width = self.hi - self.lo
            inside = model.clamp(self.lo + width / 4, self.hi - width / 4)
            x = torch.where(lo_open | hi_open, x, inside)
            x = torch.where(hi_open & ~lo_open & (model > self.lo), model, x)
            x = torch.where(lo_open & ~hi_open & (model < self.hi), model, x)
        x = torch.where(lo_open & hi_open, self.x0, x).clamp(self.x_min, self.x_max)
        # A finished problem re-evaluates its best point (harmless in a batched sweep).
        return torch.where(self.done_mask(), self.best_x, x)

    def update(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Record measurements `f` (n,) at points `x` (n,); return (n,) bool, True where `x`
        became the best point so far (callers keep that evaluation's outputs)."""
        x, f = x.to(torch.float64), f.to(torch.float64)
        active = ~self.done_mask()
        above = f > self.target
        self.lo = torch.where(active & above, x, self.lo)
        self.hi = torch.where(active & ~above, x, self.hi)
        self.outward += (active & (self.lo.isnan() ^ self.hi.isnan())).double()
        gap, best_gap = (f - self.target).abs(), (self.best_f - self.target).abs()
        better = active & ((gap < best_gap) | ((gap == best_gap) & (f < self.best_f)))
        self.best_x = torch.where(better, x, self.best_x)
        self.best_f = torch.where(better, f, self.best_f)
        self.steps += 1
        return better

    def done_mask(self) -> torch.Tensor:
        """(n,) bool: problem met its tolerance, its bracket closed, or it hit a limit."""
        hit = (self.best_f - self.target).abs() <= self.tol
        closed = (self.hi - self.lo).abs() < self.x_tol       # False while a side is open
        at_limit = (self.hi.isnan() & (self.lo >= self.x_max)) | (self.lo.isnan() & (self.hi <= self.x_min))
        return hit | closed | at_limit

    def done(self) -> bool:
        return bool(self.done_mask().all())
