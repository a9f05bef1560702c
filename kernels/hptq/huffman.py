"""Length-limited canonical Huffman codes for HPTQ (docs/format.md §3).

Code lengths come from package-merge (Larmore & Hirschberg 1990), which is optimal for any
length limit and equals plain Huffman's cost when the limit does not bind.

Alphabet rule (`design_code`): a value gets its own table entry when it occurs at least
`MIN_DIRECT_COUNT` = 3 times. A table entry costs 40 stored bits (int32 value + uint8
length); an escaped occurrence costs 16 raw bits more than a code of similar length, so an
entry pays for itself from 3 occurrences on. All other values share the escape symbol, so
escapes are values seen once or twice (a vanishing fraction of a layer). Values that cannot
be escaped (outside the int16 range) always get an entry. At most 2^12 symbols fit a
12-bit limit; beyond that the most frequent values are kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from babai_kernels.contract import HPTQ_ESCAPE_BITS as ESCAPE_BITS, HPTQ_MAX_CODE_LEN as MAX_CODE_LEN

ESCAPE = -(2**31)                 # int32 minimum: the escape symbol in `code_values`
MIN_DIRECT_COUNT = 3
TABLE_ENTRY_BITS = 32 + 8         # one int32 value + one uint8 length
ESCAPE_RANGE = (-(2 ** (ESCAPE_BITS - 1)), 2 ** (ESCAPE_BITS - 1) - 1)


def package_merge_lengths(weights: np.ndarray, max_len: int) -> np.ndarray:
    """Optimal prefix-code lengths (each ≤ max_len) for positive `weights` (S,) → (S,) int64.

    Coin-collector form: every symbol is a coin of width 2^-l at each depth l = 1..max_len.
    From depth max_len up, pair the sorted list into packages and merge them with the leaves;
    the 2S − 2 cheapest items at depth 1 fix the code: a symbol's length is the number of
    times it is chosen. The chosen set is a prefix at every depth, so one backward pass
    counts them. A single symbol gets length 1.
    """
    w = np.asarray(weights, dtype=np.int64)
    n = w.size
    if n == 0 or (w <= 0).any():
        raise ValueError("weights: need at least one symbol and all weights positive")
    if n > 2**max_len:
        raise ValueError(f"weights: {n} symbols cannot have codes of at most {max_len} bits")
    if n == 1:
        return np.ones(1, dtype=np.int64)
    order = np.argsort(w, kind="stable")
    leaf_w = w[order]
    sources = [np.arange(n)]                     # ≥ 0: leaf (sorted index); < 0: package −1 − i
    item_w = leaf_w
    for _ in range(max_len - 1):
        pairs = item_w.size // 2
        package_w = item_w[0:2 * pairs:2] + item_w[1:2 * pairs:2]
        merged_w = np.concatenate([leaf_w, package_w])
        merged_src = np.concatenate([np.arange(n), -1 - np.arange(pairs)])
        by_weight = np.argsort(merged_w, kind="stable")   # leaves first among equal weights
        item_w, src = merged_w[by_weight], merged_src[by_weight]
        sources.append(src)
    lengths_sorted = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for src in reversed(sources):
        chosen = src[:take]
        leaves = chosen[chosen >= 0]
        lengths_sorted[leaves] += 1
        take = 2 * int((chosen < 0).sum())
    lengths = np.empty(n, dtype=np.int64)
    lengths[order] = lengths_sorted
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Codes of a canonical table (S,) with non-decreasing lengths: code_0 = 0,
    code_i = (code_{i−1} + 1) << (len_i − len_{i−1}). Returns (S,) int64."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    for i in range(1, lengths.size):
        codes[i] = (codes[i - 1] + 1) << int(lengths[i] - lengths[i - 1])
    return codes


@dataclass
class CodeTable:
    """A canonical code. values: (S,) int64 in canonical order (ESCAPE for the escape symbol);
    lengths: (S,) int64 non-decreasing; codes: (S,) int64; weights: (S,) symbol counts."""

    values: np.ndarray
    lengths: np.ndarray
    codes: np.ndarray
    weights: np.ndarray

    @property
    def escape_index(self) -> int | None:
        hits = np.flatnonzero(self.values == ESCAPE)
        return int(hits[0]) if hits.size else None

    def payload_bits(self) -> int:
        """Bits of all codes plus the raw escape bits: the stream length before padding."""
        bits = int((self.weights * self.lengths).sum())
        esc = self.escape_index
        return bits + (int(self.weights[esc]) * ESCAPE_BITS if esc is not None else 0)


def design_code(values: np.ndarray, counts: np.ndarray, max_len: int = MAX_CODE_LEN) -> CodeTable:
    """Canonical length-limited code for the histogram (values (V,) distinct ints, counts (V,) > 0)."""
    values = np.asarray(values, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if ((values < ESCAPE) | (values > 2**31 - 1)).any() or (values == ESCAPE).any():
        bad = values[(values <= ESCAPE) | (values > 2**31 - 1)][0]
        raise ValueError(f"z: value {int(bad)} is not representable (int32, excluding int32 min)")
    forced = (values < ESCAPE_RANGE[0]) | (values > ESCAPE_RANGE[1])
    direct = forced | (counts >= MIN_DIRECT_COUNT)
    capacity = 2**max_len
    if direct.sum() + (~direct).any() > capacity:
        # Keep forced values, then the most frequent; one slot goes to the escape.
        rank = np.lexsort((np.abs(values), -counts, ~forced))
        direct = np.zeros_like(direct)
        direct[rank[: capacity - 1]] = True
        if (forced & ~direct).any():
            bad = values[forced & ~direct][0]
            raise ValueError(f"z: value {int(bad)} needs more than {ESCAPE_BITS} escape bits and "
                             f"the {max_len}-bit code table is full")
    sym_values, sym_weights = values[direct], counts[direct]
    escaped = int(counts[~direct].sum())
    if escaped:
        sym_values = np.concatenate([sym_values, [ESCAPE]])
        sym_weights = np.concatenate([sym_weights, [escaped]])
    lengths = package_merge_lengths(sym_weights, max_len)
    order = np.lexsort((sym_values, lengths))
    lengths = lengths[order]
    return CodeTable(sym_values[order], lengths, canonical_codes(lengths), sym_weights[order])
