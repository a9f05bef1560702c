"""SSQR pack/unpack exactly as docs/format.md §2.

Tensors of one layer (N output rows, K input columns, b bits, group size G):

    qweight       int32   (K*b/32, N)  codes u = z + 2^(b-1), packed along K in blocks of 32
    scales        float16 (K/G, N)
    perm          int32   (K,)         stored column j holds original column perm[j]
    outlier_cols  int16   (N, cap)     stored column of each outlier, ascending, padding at the end
    outlier_vals  float16 (N, cap)     outlier value; padding is (col 0, value +0.0)

The bit layout of one 32-column block is a list of word fields (`WORD_FIELDS`), shared by the
packer and the unpacker: word i of the block holds `count` consecutive columns starting at
`first`, field t (of `width` bits, at bit `width*t`) carrying `(u >> value_shift) & (2^width-1)`.
"""
from __future__ import annotations

import torch

from babai_kernels.common import check_finite, check_tensor
from babai_kernels.contract import BLOCK, MAX_K, TENSOR_NAMES as CONTRACT_TENSOR_NAMES


# bits -> per-word (first column, column count, field width, value shift) of a 32-column block.
WORD_FIELDS = {
    2: [(0, 16, 2, 0), (16, 16, 2, 0)],
    3: [(0, 16, 2, 0), (16, 16, 2, 0), (0, 32, 1, 2)],
    4: [(0, 8, 4, 0), (8, 8, 4, 0), (16, 8, 4, 0), (24, 8, 4, 0)],
}
TENSOR_NAMES = CONTRACT_TENSOR_NAMES["ssqr"]   # the contract's list, for this module's checks


def _check_bits(bits: int) -> None:
    if bits not in WORD_FIELDS:
        raise ValueError(f"bits: must be 2, 3 or 4, got {bits}")


def _check_k(name: str, k: int) -> None:
    if k % BLOCK != 0 or not 0 < k <= MAX_K:
        raise ValueError(f"{name}: K={k} must be a positive multiple of 32 and at most {MAX_K}")


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same bits as int32."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_codes(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes z (N, K) -> qweight int32 (K*bits/32, N)."""
    _check_bits(bits)
    check_tensor("z", z, ndim=2)
    if z.dtype.is_floating_point or z.dtype == torch.bool:
        raise ValueError(f"z: expected an integer dtype, got {z.dtype}")
    n, k = z.shape
    _check_k("z", k)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if z.numel() and (int(z.min()) < lo or int(z.max()) > hi):
        raise ValueError(f"z: codes must lie in [{lo}, {hi}] for {bits} bits, "
                         f"got range [{int(z.min())}, {int(z.max())}]")
    u = (z.to(torch.int64) + (1 << (bits - 1))).reshape(n, k // BLOCK, BLOCK)
    words = []
    for first, count, width, value_shift in WORD_FIELDS[bits]:
        fields = (u[:, :, first:first + count] >> value_shift) & ((1 << width) - 1)
        shifts = width * torch.arange(count, dtype=torch.int64, device=z.device)
        words.append((fields << shifts).sum(dim=2))          # (N, K/32)
    packed = torch.stack(words, dim=2).reshape(n, k // BLOCK * bits)  # word b*r + i
    return _to_int32(packed).T.contiguous()


def unpack_codes(qweight: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """qweight int32 (K*bits/32, N) -> signed codes int32 (N, K)."""
    _check_bits(bits)
    _check_k("K", k)
    check_tensor("qweight", qweight, dtype=torch.int32, ndim=2, shape=(k * bits // BLOCK, None))
    n = qweight.shape[1]
    words = (qweight.T.to(torch.int64) & 0xFFFFFFFF).reshape(n, k // BLOCK, bits)
    u = torch.zeros(n, k // BLOCK, BLOCK, dtype=torch.int64, device=qweight.device)
    for i, (first, count, width, value_shift) in enumerate(WORD_FIELDS[bits]):
        shifts = width * torch.arange(count, dtype=torch.int64, device=qweight.device)
        fields = (words[:, :, i:i + 1] >> shifts) & ((1 << width) - 1)
        u[:, :, first:first + count] |= fields << value_shift
    return (u.reshape(n, k) - (1 << (bits - 1))).to(torch.int32)


def check_perm(name: str, perm: torch.Tensor, k: int) -> None:
    check_tensor(name, perm, ndim=1, shape=(k,))
    if perm.dtype.is_floating_point or perm.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer dtype, got {perm.dtype}")
    seen = torch.zeros(k, dtype=torch.bool)
    in_range = bool(((perm >= 0) & (perm < k)).all())
    if in_range:
        seen[perm.long().cpu()] = True
    if not in_range or not bool(seen.all()):
        raise ValueError(f"{name}: not a permutation of 0..{k - 1}")


def dense_to_ell(values: torch.Tensor, col_dtype: torch.dtype = torch.int16) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense sparse matrix (N, K) (0 = no entry) -> (cols (N, cap) `col_dtype`, vals (N, cap) in values' dtype).

    Columns ascending per row, padded at the end with (col 0, +0.0); cap = max(1, most per row).
    SSQR's outlier_cols/outlier_vals are this of the float16 outliers.
    """
    present = values != 0
    counts = present.sum(dim=1)
    cap = max(1, int(counts.max()) if counts.numel() else 1)
    # Stable sort puts present columns first, in ascending column order.
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :cap]
    slot_used = torch.arange(cap)[None, :] < counts[:, None]
    cols = torch.where(slot_used, order, 0).to(col_dtype)
    vals = torch.where(slot_used, values.gather(1, order), 0).to(values.dtype)
    return cols.contiguous(), vals.contiguous()


def ell_to_dense(outlier_cols: torch.Tensor, outlier_vals: torch.Tensor, k: int) -> torch.Tensor:
    """(outlier_cols (N, cap), outlier_vals (N, cap)) -> dense float16 (N, K); padding adds nothing."""
    dense = torch.zeros(outlier_cols.shape[0], k, dtype=torch.float16)
    real = outlier_vals != 0
    rows = torch.arange(outlier_cols.shape[0])[:, None].expand_as(outlier_cols)
    dense[rows[real], outlier_cols.long()[real]] = outlier_vals[real]
    return dense


def pack_ssqr(z_stored: torch.Tensor, scales: torch.Tensor, perm: torch.Tensor,
              outliers: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Pack one SSQR layer.

    z_stored (N, K) int signed codes in stored order; scales (N, K/G) float16; perm (K,) int;
    outliers (N, K) float16 dense in stored order (0 = no outlier; the code there must be 0).
    Returns {qweight, scales (K/G, N), perm int32, outlier_cols, outlier_vals} (CPU, contiguous).
    """
    check_tensor("z_stored", z_stored, ndim=2)
    n, k = z_stored.shape
    _check_k("z_stored", k)
    check_tensor("scales", scales, dtype=torch.float16, ndim=2)
    if scales.shape[0] != n or scales.shape[1] == 0 or k % scales.shape[1] != 0:
        raise ValueError(f"scales: expected shape (N={n}, K/G) with G dividing K={k}, "
                         f"got {tuple(scales.shape)}")
    group = k // scales.shape[1]
    if group % BLOCK != 0:
        raise ValueError(f"scales: group size {group} (K/scales.shape[1]) is not a multiple of 32")
    check_perm("perm", perm, k)
    check_tensor("outliers", outliers, dtype=torch.float16, shape=(n, k))
    z_stored, scales, perm, outliers = (t.cpu() for t in (z_stored, scales, perm, outliers))
    qweight = pack_codes(z_stored, bits)
    clash = (outliers != 0) & (z_stored != 0)
    if bool(clash.any()):
        row, col = (int(i) for i in clash.nonzero()[0])
        raise ValueError(f"outliers: outlier at row {row}, stored column {col} where the inlier "
                         f"code is {int(z_stored[row, col])} (must be 0)")
    outlier_cols, outlier_vals = dense_to_ell(outliers)
    return {
        "qweight": qweight,
        "scales": scales.T.contiguous(),
        "perm": perm.to(torch.int32).contiguous(),
        "outlier_cols": outlier_cols,
        "outlier_vals": outlier_vals,
    }


def ssqr_meta(tensors: dict[str, torch.Tensor], bits: int | None = None,
              group_size: int | None = None) -> tuple[int, int, int, int]:
    """(N, K, bits, group_size) of a layer, derived from tensor shapes and checked against §2:
    shapes and dtypes, finite scales and outlier values, and — when given — the config's `bits`
    and `group_size` (a shape that fits another bit width is rejected, never reinterpreted)."""
    missing = [name for name in TENSOR_NAMES if name not in tensors]
    if missing:
        raise ValueError(f"SSQR tensors: missing {missing}")
    perm, qweight, scales = tensors["perm"], tensors["qweight"], tensors["scales"]
    check_tensor("perm", perm, dtype=torch.int32, ndim=1)
    k = perm.shape[0]
    _check_k("perm", k)
    check_tensor("qweight", qweight, dtype=torch.int32, ndim=2)
    n = qweight.shape[1]
    if bits is not None and qweight.shape[0] != k * bits // BLOCK:
        raise ValueError(f"qweight: shape {tuple(qweight.shape)} does not hold {bits}-bit codes (config bits) "
                         f"for K={k}: expected ({k * bits // BLOCK}, N)")
    if (qweight.shape[0] * BLOCK) % k != 0 or qweight.shape[0] * BLOCK // k not in WORD_FIELDS:
        raise ValueError(f"qweight: shape {tuple(qweight.shape)} does not give 2, 3 or 4 bits "
                         f"for K={k}")
    bits = qweight.shape[0] * BLOCK // k
    check_tensor("scales", scales, dtype=torch.float16, ndim=2)
    if scales.shape[1] != n or scales.shape[0] == 0 or k % scales.shape[0] != 0 \
            or (k // scales.shape[0]) % BLOCK != 0:
        raise ValueError(f"scales: expected shape (K/G, N={n}) with G a multiple of 32 dividing "
                         f"K={k}, got {tuple(scales.shape)}")
    if group_size is not None and k // scales.shape[0] != group_size:
        raise ValueError(f"scales: shape {tuple(scales.shape)} gives group size {k // scales.shape[0]}, "
                         f"config group_size is {group_size}")
    check_tensor("outlier_cols", tensors["outlier_cols"], dtype=torch.int16, ndim=2)
    cap = tensors["outlier_cols"].shape[1]
    if tensors["outlier_cols"].shape[0] != n or cap < 1:
        raise ValueError(f"outlier_cols: expected shape (N={n}, cap>=1), "
                         f"got {tuple(tensors['outlier_cols'].shape)}")
    check_tensor("outlier_vals", tensors["outlier_vals"], dtype=torch.float16, shape=(n, cap))
    for name in ("scales", "outlier_vals"):
        check_finite(name, tensors[name])
    return n, k, bits, k // scales.shape[0]


def check_outlier_layout(outlier_cols: torch.Tensor, outlier_vals: torch.Tensor, k: int) -> None:
    """Check the ELL rules of §2: columns in range and strictly ascending, padding only at the end."""
    real = outlier_vals != 0
    cols = outlier_cols.to(torch.int64)
    if bool((real & ((cols < 0) | (cols >= k))).any()):
        raise ValueError(f"outlier_cols: column outside [0, {k})")
    if bool((~real & (cols != 0)).any()):
        raise ValueError("outlier_cols: padding entry (value 0) with a column other than 0")
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("outlier_vals: padding before a real outlier (padding must be at the end)")
    if bool((real[:, 1:] & (cols[:, 1:] <= cols[:, :-1])).any()):
        raise ValueError("outlier_cols: columns of a row are not strictly ascending")
    if bool(torch.signbit(outlier_vals[~real].float()).any()):
        raise ValueError("outlier_vals: padding must be +0.0")


def unpack_ssqr(tensors: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of pack_ssqr: (z int32 (N, K), scales float16 (N, K/G), perm int32 (K,),
    outliers float16 (N, K) dense in stored order), after validating the whole layer."""
    n, k, bits, _ = ssqr_meta(tensors)
    t = {name: tensors[name].cpu() for name in TENSOR_NAMES}
    check_perm("perm", t["perm"], k)
    check_outlier_layout(t["outlier_cols"], t["outlier_vals"], k)
    z = unpack_codes(t["qweight"], bits, k)
    outliers = ell_to_dense(t["outlier_cols"], t["outlier_vals"], k)
    clash = (outliers != 0) & (z != 0)
    if bool(clash.any()):
        row, col = (int(i) for i in clash.nonzero()[0])
        raise ValueError(f"qweight: nonzero inlier code {int(z[row, col])} at outlier position "
                         f"row {row}, stored column {col}")
    return z, t["scales"].T.contiguous(), t["perm"].clone(), outliers
