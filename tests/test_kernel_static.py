"""benchmarks/kernel_static and benchmarks/sass: the SASS parser on a known listing, the verdicts and
the roofline on made-up rows, and one real sm_90 compile."""
import pytest

from benchmarks.kernel_static import verdicts
from benchmarks.sass import load_bits, parse_sass, resource_usage, roofline

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LOP3.LUT R6, R4, 0xf000f, R5, 0xea, !PT ;
        /*0030*/                   HMMA.16816.F32 R8, R12, R14, R8 ;
        /*0040*/               @P0 BRA 0x10 ;
        /*0050*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0060*/                   BRA 0x50 ;
        /*0070*/                   EXIT ;
"""


def test_parser_finds_the_loop_that_holds_the_mma():
    code, loop = parse_sass(LISTING, r"\bHMMA")
    assert len(code) == 8
    assert loop == (0x10, 0x40)                     # 4 instructions, the MMA loop
    assert parse_sass(LISTING, r"\bHGMMA")[1] is None
    assert parse_sass(LISTING)[1] == (0x10, 0x40)  # the larger of the two backward branches


def test_spills_are_read_from_the_stack_frame():
    """cuobjdump reports ptxas spills as STACK (LOCAL stays 0): a line of an SSQR M=16 cubin."""
    line = "    REG:168 STACK:3408 SHARED:1024 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0"
    assert resource_usage("Resource usage:\n Function _ssqr_kernel:\n" + line) == (168, 3408)
    assert resource_usage(line.replace("STACK:3408", "STACK:0")) == (168, 0)


def test_load_widths():
    assert [load_bits(o) for o in ("LDG.E.128", "LDGSTS.E.BYPASS.128", "LDG.E.64", "LDG.E",
                                   "LDG.E.U16")] == [128, 128, 64, 32, 16]


def test_verdicts_fail_on_bad_numbers():
    row = dict(kernel="ssqr", bits=4, dtype="fp16", m_tile_for=1, instr_per_weight=3.1,
               weight_load_bits=32, spill_bytes=8, config=dict(BLOCK_M=16), has=dict(HGMMA=False))
    lines = verdicts([row])
    assert any("4-bit fp16" in v and "FAIL" in v for v in lines)
    assert any("64 bit" in v and "FAIL" in v for v in lines)
    assert any("spills" in v and "FAIL" in v for v in lines)


def test_roofline_is_memory_bound_for_a_cheap_loop_and_issue_bound_for_an_expensive_one():
    row = dict(kernel="ssqr", bits=4, dtype="bf16", m_tile_for=1, config=dict(BLOCK_M=16),
               instr_per_weight=1.0)
    cheap = [r for r in roofline([row]) if r["shape"] == "8192->28672" and r["gpu"] == "H100"]
    assert cheap[0]["bound"] == "memory" and 3.0 < cheap[0]["speedup"] < 3.9   # 4.2 bits vs 16
    slow = roofline([dict(row, instr_per_weight=35.0)])
    assert all(r["bound"] == "issue" and r["speedup"] < 1 for r in slow)


def test_real_compile_of_the_ssqr_small_m_kernel():
    """Compiles the 4-bit M=1 tile for sm_90 (CPU only): wide loads, tensor cores, no spills."""
    pytest.importorskip("triton")
    from benchmarks.kernel_static import ssqr_kernel_stats
    from babai_kernels.ssqr.tuning import TILES
    bm, bn, bk, warps, stages = TILES["small"][0]
    r = ssqr_kernel_stats(4, "fp16", dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                                          num_stages=stages), 1)
    assert r["has"]["HMMA"] and r["has"]["LDGSTS"]
    assert r["spill_bytes"] == 0 and r["weight_load_bits"] >= 64
    assert 0 < r["instr_per_weight"] <= 3.0        # 35 before issue 14's redesign


def test_real_compile_of_the_hptq_gluon_kernel():
    """Compiles the Gluon decode-GEMV for sm_90 (CPU only): table and x read from shared memory,
    one LDS per decoded symbol plus one LDS.128 of x per four, no spills."""
    pytest.importorskip("triton")
    from benchmarks.kernel_static import hptq_kernel_stats, verdicts
    r = hptq_kernel_stats(4096, 1)
    ops = r["loop_opcodes"]
    assert ops.get("LDS", 0) == r["symbols_per_thread_iter"]
    assert ops.get("LDS.128", 0) == r["symbols_per_thread_iter"] / 4
    assert not any(o.startswith("LDG") and o != "LDG.E" for o in ops)   # only the stream words
    assert not any(o.startswith("BAR") for o in ops)        # warps never wait for each other
    assert r["spill_bytes"] == 0 and r["shared_bytes"] >= 4096
    assert any(v.startswith("HPTQ") and v.endswith("PASS") for v in verdicts([r]))
