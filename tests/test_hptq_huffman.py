"""Length-limited canonical Huffman codes (kernels/hptq/huffman.py) against independent references."""
import heapq
import itertools

import numpy as np
import pytest

from babai_kernels.hptq.huffman import (ESCAPE, MIN_DIRECT_COUNT, canonical_codes, design_code,
                                  package_merge_lengths)


def textbook_huffman_cost(weights) -> int:
    """Σ weight · depth of a heapq Huffman tree (= Σ of all merged weights)."""
    heap = list(int(w) for w in weights)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def brute_force_limited_cost(weights, max_len) -> int:
    """Cheapest Σ w·l over all length vectors with lengths ≤ max_len and Kraft sum ≤ 1."""
    best = None
    for lengths in itertools.product(range(1, max_len + 1), repeat=len(weights)):
        if sum(2.0 ** -l for l in lengths) <= 1:
            cost = sum(w * l for w, l in zip(weights, lengths))
            best = cost if best is None else min(best, cost)
    return best


def kraft(lengths, max_len=12) -> float:
    return sum(2 ** (max_len - int(l)) for l in lengths) / 2**max_len


@pytest.mark.parametrize("seed", range(12))
def test_unconstrained_lengths_match_textbook_huffman_cost(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    weights = rng.geometric(rng.uniform(0.05, 0.6), size=n) * rng.integers(1, 50, size=n)
    lengths = package_merge_lengths(weights, max_len=48)
    assert int((weights * lengths).sum()) == textbook_huffman_cost(weights)
    assert kraft(lengths, 48) <= 1


@pytest.mark.parametrize("seed", range(10))
def test_limited_lengths_are_optimal_against_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 7))
    max_len = max(int(np.ceil(np.log2(n))), int(rng.integers(2, 4)))
    weights = (2.0 ** rng.uniform(0, 12, size=n)).astype(np.int64) + 1   # skewed: the limit binds
    lengths = package_merge_lengths(weights, max_len)
    assert lengths.max() <= max_len and kraft(lengths, max_len) <= 1
    assert int((weights * lengths).sum()) == brute_force_limited_cost(weights, max_len)


def test_fibonacci_weights_respect_limit_of_12():
    weights = np.array([1, 1] + [0] * 28, dtype=np.int64)
    for i in range(2, 30):
        weights[i] = weights[i - 1] + weights[i - 2]          # unconstrained depth 29
    lengths = package_merge_lengths(weights, 12)
    assert lengths.max() == 12 and kraft(lengths) <= 1
    assert textbook_huffman_cost(weights) < (weights * lengths).sum()


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = np.array([2, 2, 3, 3, 3, 4, 5, 5])
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths)]
    assert all(len(w) == l for w, l in zip(words, lengths))
    for a, b in itertools.combinations(words, 2):
        assert not b.startswith(a) and not a.startswith(b)
    assert words == sorted(words)


def test_alphabet_rule_escapes_rare_values_and_forces_wide_ones():
    values = np.array([-3, 0, 1, 7, 50000, -40000])
    counts = np.array([MIN_DIRECT_COUNT - 1, 100, MIN_DIRECT_COUNT, 1, 1, 2])
    table = design_code(values, counts)
    assert set(table.values.tolist()) == {0, 1, 50000, -40000, ESCAPE}
    assert int(table.weights[table.values == ESCAPE][0]) == MIN_DIRECT_COUNT - 1 + 1
    order = list(zip(table.lengths.tolist(), table.values.tolist()))
    assert order == sorted(order)


def test_single_symbol_gets_length_one_and_no_escape_when_all_direct():
    table = design_code(np.array([4]), np.array([10]))
    assert table.values.tolist() == [4] and table.lengths.tolist() == [1]


def test_unrepresentable_value_is_rejected():
    with pytest.raises(ValueError, match="-2147483648"):
        design_code(np.array([ESCAPE, 0]), np.array([5, 5]))
