"""Outlier budget per row by contribution to the layer error (issue 15, hypothesis d).

For one linear, SSQR's sweep is run at a ladder of per-row scale multipliers m = m0·f (m0: the
round-to-nearest start of formats/ssqr.py), giving for every row n and rung i its outlier count
c[n, i] and sweep loss L[n, i] (rows are independent in the sweep, so each is exact). Then, with
the same total outlier count:
  uniform:   each row takes its least-loss rung with c ≤ cap = round(rate·K) (SSQR's rate_mode
             'cap'; rows with none take their fewest-outlier rung);
  allocated: each row takes argmin_i L[n, i] + λ·c[n, i], λ bisected so the total count does not
             exceed uniform's — rows where outliers buy the most error get more of them.
Bits follow a CSR cost model (32 bits per outlier + 32 per row, b-bit codes, fp16 scales, int32
perm), since SSQR v1's ELL storage pads every row to the largest count.
"""
from __future__ import annotations

import math

import torch

from babai_quantizer.formats.layer import prepare_layer
from babai_quantizer.formats.ssqr import multiplied_scales, rtn_start_multiplier
from babai_quantizer.lattice import OverflowGrid, group_scales, step_group_index, sweep

FACTORS = torch.exp(torch.linspace(math.log(0.55), math.log(3.0), 16, dtype=torch.float64))


def ladder(W: torch.Tensor, H: torch.Tensor, bits: int, group: int, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts (N, F) float64, loss (N, F) float64) of the sweep at m0·FACTORS (global act-order)."""
    Wd, prep = prepare_layer(W, H, ordering="act", damping=0.01, row_parallel_blocks=1, G_cross=None,
                             dtype=torch.float32, device=None)
    gidx = step_group_index(prep.perm, group, "quant_order")
    s0 = group_scales(Wd, bits, group, order=prep.perm, method="mse")
    log_m0 = torch.log(rtn_start_multiplier(Wd[:, prep.perm], s0[:, gidx], bits, rate).clamp_min(2.0 ** -12))
    counts, loss = [], []
    for f in FACTORS:
        res = sweep(Wd, prep, multiplied_scales(s0, log_m0 + math.log(f)), gidx, OverflowGrid(bits))
        counts.append(res.outlier.sum(1).double().cpu())
        loss.append(res.loss.double().cpu())
    return torch.stack(counts, 1), torch.stack(loss, 1)


def choose(counts: torch.Tensor, loss: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uniform pick, allocated pick): (N,) rung indices; see the module docstring."""
    ok = counts <= cap
    uniform = torch.where(ok, loss, torch.full_like(loss, math.inf)).argmin(1)
    none = ~ok.any(1)
    uniform[none] = counts[none].argmin(1)
    budget = counts.gather(1, uniform[:, None]).sum()
    lo, hi = 0.0, float(loss.max() + 1)
    pick = (loss + hi * counts).argmin(1)
    for _ in range(60):
        lam = (lo + hi) / 2
        cand = (loss + lam * counts).argmin(1)
        if counts.gather(1, cand[:, None]).sum() <= budget:
            hi, pick = lam, cand
        else:
            lo = lam
    return uniform, pick


def csr_bits(bits: int, group: int, n: int, k: int, outliers: float) -> float:
    return bits + 16 / group + (32 * outliers + 32 * n + 32 * k) / (n * k)


def linear_allocation(W: torch.Tensor, H: torch.Tensor, b: int, g: int, rate: float) -> dict:
    """{uniform_loss, allocated_loss, outliers, max_row_over_cap} of one (N, K) linear."""
    counts, loss = ladder(W, H, b, g, rate)
    cap = round(rate * W.shape[1])
    uni, alloc = choose(counts, loss, cap)
    return {"uniform_loss": float(loss.gather(1, uni[:, None]).sum()),
            "allocated_loss": float(loss.gather(1, alloc[:, None]).sum()),
            "outliers": float(counts.gather(1, uni[:, None]).sum()),
            "max_row_over_cap": float(counts.gather(1, alloc[:, None]).max()) / max(cap, 1)}


def allocation_rows(hessians: dict, settings: list[str], results: dict, reference, gptq: dict,
                    cached=lambda key, compute: compute()) -> list[dict]:
    """One summary per 'bits:group:rate' setting over every linear of `hessians` ({depth: {group:
    (H, {kind: W})}}); `results`/`gptq`/`reference` give each linear's GPTQ curve; `cached(key,
    compute)` may cache each linear's result."""
    out = []
    for setting in settings:
        b, g, rate = setting.split(":")
        b, g, rate = int(b), int(g), float(rate)
        ru, ra, rr, worst = [], [], [], 0.0
        for depth, groups in hessians.items():
            for H, weights in groups.values():
                for kind, W in weights.items():
                    lin = f"{depth}.{kind}"
                    n, k = W.shape
                    r = cached([setting, lin], lambda: linear_allocation(W, H, b, g, rate))
                    lu, la = r["uniform_loss"], r["allocated_loss"]
                    pts = [(results[c][lin]["bits"], results[c][lin]["error"]) for c in gptq if lin in results.get(c, {})]
                    ref, _ = reference(pts, csr_bits(b, g, n, k, r["outliers"]))
                    ru.append(lu / ref)
                    ra.append(la / ref)
                    rr.append(la / lu)
                    worst = max(worst, r["max_row_over_cap"])
                    print("allocation", setting, lin, round(lu / ref, 3), round(la / ref, 3), flush=True)
        gm = lambda v: math.exp(sum(math.log(x) for x in v) / len(v))  # noqa: E731
        out.append({"setting": setting, "linears": len(ru), "uniform_ratio": gm(ru), "allocated_ratio": gm(ra),
                    "allocated_over_uniform": gm(rr), "max_row_over_cap": worst})
    return out
