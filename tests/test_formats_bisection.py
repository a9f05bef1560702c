"""LogBisection: batched bracketing search on decreasing functions of log m."""
import math

import torch

from babai_quantizer.formats.bisection import LogBisection


def _run(search, f, max_steps=60):
    while not search.done() and search.steps < max_steps:
        x = search.propose()
        search.update(x, f(x))
    return search


def test_continuous_decreasing_functions_reach_their_targets():
    # f_i(x) = c_i · exp(−x): root x* = log(c_i / t_i), some far from the start (bracket expansion).
    c = torch.tensor([1.0, 50.0, 1e-3, 7.0], dtype=torch.float64)
    t = torch.tensor([0.5, 0.5, 0.5, 7.0], dtype=torch.float64)
    s = _run(LogBisection(torch.zeros(4), t, tol=1e-6, x_tol=1e-9), lambda x: c * torch.exp(-x))
    assert torch.allclose(s.best_x, torch.log(c / t), atol=1e-5)
    assert ((s.best_f - t).abs() <= 1e-6).all()


def test_step_functions_pick_the_closest_reachable_value():
    # Integer counts: f(x) = floor(100·exp(−x)) jumps over non-integer targets; the search must end
    # (bracket closes) at the count nearest the target, and never report an unevaluated point.
    t = torch.tensor([5.76, 37.2, 0.0], dtype=torch.float64)
    f = lambda x: torch.floor(100 * torch.exp(-x))  # noqa: E731
    s = _run(LogBisection(torch.zeros(3), t, tol=0.5, x_tol=1e-6), f)
    assert s.done()
    assert torch.equal(s.best_f, torch.tensor([6.0, 37.0, 0.0], dtype=torch.float64))
    assert torch.equal(f(s.best_x), s.best_f)


def test_search_stops_within_the_step_budget_when_unreachable():
    t = torch.tensor([-1.0], dtype=torch.float64)              # f > 0 everywhere: never reached
    s = _run(LogBisection(torch.zeros(1), t, tol=0.01), lambda x: torch.exp(-x), max_steps=8)
    assert s.steps == 8 and not s.done()
    # Outward steps double: x = 0, 1, 3, 7, … (×log 2), i.e. 2^7 − 1 after 8 evaluations.
    assert math.isclose(s.best_x.item(), (2 ** 7 - 1) * math.log(2.0))


def test_unreachable_problem_ends_at_the_search_limit():
    # Row 0: f ≡ 0 never exceeds its target, so the lower side never closes; it must stop at
    # x_min instead of using up the step budget, while row 1 converges normally.
    t = torch.tensor([3.0, 3.0], dtype=torch.float64)
    f = lambda x: torch.stack([torch.zeros(()), 10 * torch.exp(-x[1])]).double()  # noqa: E731
    s = _run(LogBisection(torch.zeros(2), t, tol=1e-3, x_tol=1e-9, x_min=-5.0, x_max=5.0), f)
    assert s.done() and s.steps < 60
    assert s.hi[0].item() == -5.0
    assert abs(s.best_f[1].item() - 3.0) <= 1e-3


def test_model_slope_speeds_up_and_keeps_the_bracket_safe():
    # f(x) = 3 − x/log 2 + small wiggle: the model step (slope −1/log 2) lands almost at once;
    # a wrong slope (10× too steep) must still converge through the bracket safeguard.
    t = torch.tensor([1.7], dtype=torch.float64)
    f = lambda x: 3 - x / math.log(2.0) + 0.02 * torch.sin(40 * x)  # noqa: E731
    fast = _run(LogBisection(torch.zeros(1), t, tol=1e-3, x_tol=1e-9, slope=-1 / math.log(2.0)), f)
    plain = _run(LogBisection(torch.zeros(1), t, tol=1e-3, x_tol=1e-9), f)
    wrong = _run(LogBisection(torch.zeros(1), t, tol=1e-3, x_tol=1e-9, slope=-10 / math.log(2.0)), f)
    for s in (fast, plain, wrong):
        assert s.done() and abs(s.best_f.item() - 1.7) <= 1e-3
    assert fast.steps < plain.steps
