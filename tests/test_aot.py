"""babai_kernels.aot (cubins built with Triton ≥ 3.9, launched through libcuda where Triton is
older): version gating, bundle integrity and freshness, and the argument packing checked against
Triton's own compile of the same variant (its PTX entry parameters and launch metadata)."""
import ctypes
import json
import shutil
import zipfile

import pytest
import torch

from babai_kernels import aot

triton = pytest.importorskip("triton")
NEW_TRITON = aot.triton_version() >= aot.MIN_TRITON
PTX_SIZES = {"u64": 8, "u32": 4, "f32": 4}


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(aot.LAUNCH_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


def test_use_aot_only_on_cuda_with_an_old_triton(clean_env):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    clean_env.setattr(aot, "triton_version", lambda: (3, 6))
    assert aot.use_aot(cuda) and not aot.use_aot(cpu)
    clean_env.setattr(aot, "triton_version", lambda: None)
    assert aot.use_aot(cuda)
    clean_env.setattr(aot, "triton_version", lambda: (3, 9))
    assert not aot.use_aot(cuda)
    clean_env.setenv(aot.LAUNCH_ENV, "aot")
    assert aot.use_aot(cuda) and not aot.use_aot(cpu)
    clean_env.setenv("TRITON_INTERPRET", "1")
    assert not aot.use_aot(cuda)
    clean_env.delenv("TRITON_INTERPRET")
    clean_env.setenv(aot.LAUNCH_ENV, "cubin")
    with pytest.raises(ValueError, match=aot.LAUNCH_ENV):
        aot.use_aot(cuda)


def test_gluon_available_with_an_old_triton_means_a_loadable_bundle(clean_env, tmp_path):
    from babai_kernels import common
    clean_env.setattr(aot, "triton_version", lambda: (3, 6))
    try:
        common.gluon_available.cache_clear()
        assert common.gluon_available()
        clean_env.setattr(aot, "BUNDLE", tmp_path / "none.zip")
        aot.bundle.cache_clear()
        common.gluon_available.cache_clear()
        assert not common.gluon_available()
    finally:
        aot.bundle.cache_clear()
        common.gluon_available.cache_clear()


def test_bundle_refuses_a_corrupt_or_missing_cubin(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(aot.BUNDLE) as src, zipfile.ZipFile(bad, "w") as dst:
        index = json.loads(src.read("index.json"))
        victim = index["variants"][0]["cubin"]
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name == victim else data)
    with pytest.raises(ValueError, match=victim):
        aot.Bundle(bad)
    with pytest.raises(ValueError, match="aot_bundle"):
        aot.Bundle(tmp_path / "none.zip")
    good = tmp_path / "good.zip"
    shutil.copy(aot.BUNDLE, good)
    assert len(aot.Bundle(good).variants) == len(index["variants"])


@pytest.mark.skipif(not NEW_TRITON, reason="the bundle's source keys are Triton ≥ 3.9's")
def test_bundle_is_fresh_and_covers_every_spec():
    """Built from the kernels' current source, and holding every variant aot_bundle lists."""
    from benchmarks.aot_bundle import hptq_specs, source_keys, spec_key, ssqr_specs
    b = aot.Bundle()
    with zipfile.ZipFile(aot.BUNDLE) as z:
        index = json.loads(z.read("index.json"))
    assert index["source"] == source_keys(), "kernel source changed: python -m benchmarks.aot_bundle"
    assert tuple(int(v) for v in index["triton"].split(".")[:2]) >= aot.MIN_TRITON
    assert {spec_key(s) for s in ssqr_specs() + hptq_specs()} == set(b.variants)


@pytest.mark.skipif(not NEW_TRITON, reason="compiles with Triton ≥ 3.9")
def test_a_fresh_compile_matches_the_bundled_cubin_and_its_parameters():
    """Triton's own compile of one variant: same cubin bytes, same launch metadata, and its PTX
    entry parameters are the variant's parameters (in order, by type) + the two scratch pointers."""
    from benchmarks.aot_bundle import META, compile_variant, ptx_params, spec_key
    spec = dict(kernel="hptq", in_features=4096, m=1, act="bf16", decode=False)
    kernel, sig, _, _ = compile_variant(spec)
    v = aot.Bundle().variants[spec_key(spec)]
    assert kernel.asm["cubin"] == aot.Bundle().cubins[v.cubin]
    assert {k: getattr(kernel.metadata, k) for k in META} == {k: getattr(v, k) for k in META}
    ptx = ptx_params(kernel.asm["ptx"], v.function)
    assert ptx[-2:] == ["u64", "u64"] and len(ptx) == len(v.params) + 2
    assert [n for n, t in sig.items() if t != "constexpr"] == [n for n, _ in v.params]
    x = torch.zeros(1, 4096, dtype=torch.bfloat16)
    args = dict(x_ptr=x, words_ptr=torch.zeros(64, dtype=torch.int32),
                bases_ptr=torch.zeros(64, dtype=torch.int32), offsets_ptr=torch.zeros(64, dtype=torch.int16),
                lut_ptr=torch.zeros(1024, dtype=torch.int32), bias_ptr=x, out_ptr=x, scale=0.5, M=1,
                N=4096, K=4096, spans=32)
    packed = aot.pack_args(v, args)
    assert [ctypes.sizeof(p) for p in packed] == [PTX_SIZES[t] for t in ptx]
    assert packed[0].value == x.data_ptr() and packed[-1].value == 0 and packed[-2].value == 0
    assert [type(p) for p in packed][7] is ctypes.c_float and packed[7].value == 0.5


def _hptq_variant():
    """The bundle's HPTQ decode-GEMV at K = 4096, M = 1."""
    from babai_kernels.hptq.gemv import compile_spec
    sig, consts = compile_spec(4096, 1)
    return aot.bundle().find("hptq", consts, sig, num_warps=8, num_stages=3)


def test_pack_args_names_the_bad_argument():
    v = _hptq_variant()
    x = torch.zeros(4, 4096, dtype=torch.bfloat16)
    good = dict(x_ptr=x, words_ptr=torch.zeros(64, dtype=torch.int32),
                bases_ptr=torch.zeros(64, dtype=torch.int32), offsets_ptr=torch.zeros(64, dtype=torch.int16),
                lut_ptr=torch.zeros(1024, dtype=torch.int32), bias_ptr=x, out_ptr=x, scale=1.0, N=4096,
                K=4096, spans=32)
    assert len(aot.pack_args(v, good)) == len(v.params) + 2
    for bad, match in ((dict(x_ptr=x.float()), "x_ptr"), (dict(N=4100), "N"),
                       (dict(x_ptr=x.view(-1)[1:]), "x_ptr.*aligned"), (dict(K=2**31), "K"),
                       (dict(words_ptr=3), "words_ptr")):
        with pytest.raises(ValueError, match=match):
            aot.pack_args(v, {**good, **bad})
    with pytest.raises(ValueError, match="spans"):
        aot.pack_args(v, {k: a for k, a in good.items() if k != "spans"})


def test_a_launch_the_bundle_lacks_is_refused_by_name():
    with pytest.raises(aot.MissingVariant, match="BLOCK_M"):
        aot.bundle().find("hptq", dict(SPANS=32, BLOCK_M=1, HAS_BIAS=True, DECODE=False, USE_ASM=True,
                                       NUM_WARPS=8, M=1), {}, 8, 3)
    from babai_kernels.hptq.gemv import launch_reason
    cuda = torch.device("cuda")
    with aot.dry_run():                       # the AOT route: the chooser's question per layer
        assert launch_reason(4096, torch.bfloat16, cuda) is None
        assert "SPANS" in launch_reason(576, torch.bfloat16, cuda)       # SmolLM2: not bundled
        assert "fp16" in launch_reason(4096, torch.float16, cuda)
    assert launch_reason(576, torch.bfloat16, torch.device("cpu")) is None   # Triton's JIT serves it


@pytest.mark.parametrize("m", [1, 16, 128])
def test_the_ssqr_launcher_asks_for_a_bundled_variant(m):
    """matmul.launch on an old-Triton route resolves to a bundled cubin for the GPU check's configs
    (the runtime's key = the builder's key) and packs every parameter."""
    from babai_kernels.ssqr.linear import prepare_ssqr
    from babai_kernels.ssqr.matmul import launch
    from babai_kernels.ssqr.tuning import TILES, m_range
    from benchmarks.kernel_speed import random_ssqr_tensors
    torch.manual_seed(0)
    p = prepare_ssqr(random_ssqr_tensors(64, 256, 3, 128, 0.01, torch.device("cpu")), "cpu")
    with aot.dry_run() as calls:
        for bm, bn, bk, warps, stages in TILES[m_range(m)]:     # every candidate of the tuner
            launch(torch.zeros(m, 256, dtype=torch.bfloat16), p, None,
                   dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=2, num_warps=warps, num_stages=stages))
    assert [v.num_warps for _, v, _ in calls] == [t[3] for t in TILES[m_range(m)]]
    assert all(("M", "i32") in v.params if m > 1 else ("M", "i32") not in v.params for _, v, _ in calls)
    assert calls[0][2] == (1, 2, -(-m // TILES[m_range(m)][0][0]))   # N tiles, split-K, M tiles


def test_ssqr_launch_reason_names_what_the_bundle_lacks():
    from babai_kernels.ssqr.matmul import launch_reason
    cuda = torch.device("cuda")
    with aot.dry_run():
        assert launch_reason(4, 128, True, False, torch.bfloat16, cuda) is None
        assert launch_reason(3, 128, True, False, torch.bfloat16, cuda) is None
        assert "'GROUP': 64" in launch_reason(4, 64, True, False, torch.bfloat16, cuda)
        assert "'HAS_BIAS': True" in launch_reason(4, 128, True, True, torch.bfloat16, cuda)
        assert "fp16" in launch_reason(4, 128, True, False, torch.float16, cuda)
    assert launch_reason(2, 64, True, True, torch.float16, torch.device("cpu")) is None


def test_the_hptq_launcher_asks_for_bundled_gemv_and_decode_variants():
    from babai_kernels.hptq.gemv import hptq_decode, hptq_gemv
    from babai_kernels.hptq.lanes import build_lane_layout
    from babai_kernels.hptq.prepare import PreparedHPTQ
    z = torch.randint(-3, 4, (32, 4096))
    lanes = build_lane_layout(z)
    p = PreparedHPTQ(32, 4096, 0.25, lanes.words, lanes.bases, lanes.offsets, lanes.lut, lanes.padded_k,
                     torch.device("cpu"))
    with aot.dry_run() as calls:
        hptq_gemv(torch.zeros(1, 4096, dtype=torch.bfloat16), p)
        hptq_gemv(torch.zeros(8, 4096, dtype=torch.bfloat16), p)
        hptq_decode(p, torch.bfloat16)
    assert [v.num_warps for _, v, _ in calls] == [8, 8, 8] and all(g == (1, 1, 1) for _, _, g in calls)
    assert len({v.key for _, v, _ in calls}) == 3


class _FakeCuda:
    """Records the libcuda calls the launcher makes (no GPU here); every call succeeds. Out
    parameters arrive as ctypes.byref(...) objects, whose `_obj` is the ctypes value."""
    OPTIN, STATIC = 232448, 1024

    def __init__(self, current=0):
        self.current, self.calls, self.launches = current, [], []

    def __getattr__(self, name):             # calls whose results the launcher does not read
        return lambda *args: self.calls.append((name, args)) or 0

    def cuDevicePrimaryCtxRetain(self, out, dev):
        out._obj.value = 0x1000 + dev.value
        return 0

    def cuCtxGetCurrent(self, out):
        out._obj.value = self.current
        return 0

    def cuCtxSetCurrent(self, ctx):
        self.current = ctx.value
        return 0

    def cuModuleLoadData(self, out, image):
        self.calls.append(("cuModuleLoadData", image))
        out._obj.value = 0xD00
        return 0

    def cuModuleGetFunction(self, out, module, name):
        self.calls.append(("cuModuleGetFunction", module.value, name))
        out._obj.value = 0xF00
        return 0

    def cuDeviceGetAttribute(self, out, attribute, dev):
        out._obj.value = self.OPTIN
        return 0

    def cuFuncGetAttribute(self, out, attribute, fn):
        out._obj.value = self.STATIC
        return 0

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        self.launches.append(dict(fn=fn.value, grid=(gx.value, gy.value, gz.value),
                                  block=(bx.value, by.value, bz.value), shared=shared.value,
                                  stream=stream.value, params=params, extra=extra))
        return 0


def test_the_launch_passes_triton_launch_geometry_and_a_pointer_per_parameter():
    """cuLaunchKernel gets Triton's geometry (grid × num_ctas, 32·num_warps threads, metadata.shared
    bytes) and kernelParams[i] pointing at packed parameter i (the scratch pointers last)."""
    v = _hptq_variant()
    x = torch.zeros(1, 4096, dtype=torch.bfloat16)
    args = dict(x_ptr=x, words_ptr=torch.zeros(64, dtype=torch.int32),
                bases_ptr=torch.zeros(64, dtype=torch.int32), offsets_ptr=torch.zeros(64, dtype=torch.int16),
                lut_ptr=torch.zeros(1024, dtype=torch.int32), bias_ptr=x, out_ptr=x, scale=0.25,
                N=4096, K=4096, spans=32)
    packed = aot.pack_args(v, args)
    driver = aot._Driver(_FakeCuda())
    driver.functions[(0, v.key)] = ctypes.c_void_p(0xF00)       # as if cuModuleLoadData ran
    driver.launch(v, (128, 1, 1), packed, torch.device("cuda", 0), stream=0xABC)
    assert driver.lib.current == 0x1000                         # device 0's primary context made current
    (call,) = driver.lib.launches
    assert call["fn"] == 0xF00 and call["stream"] == 0xABC and call["extra"] is None
    assert call["grid"] == (128 * v.num_ctas, 1, 1) and call["block"] == (32 * v.num_warps, 1, 1)
    assert call["shared"] == v.shared
    got = [call["params"][i] for i in range(len(packed))]
    assert got == [ctypes.addressof(p) for p in packed]
    assert ctypes.c_uint64.from_address(got[0]).value == x.data_ptr()
    assert ctypes.c_float.from_address(got[7]).value == 0.25
    assert ctypes.c_int32.from_address(got[9]).value == 4096


def test_loading_a_variant_opts_in_to_its_dynamic_shared_memory(monkeypatch):
    """cuModuleLoadData gets the bundled cubin, cuModuleGetFunction its kernel name, and a kernel
    above 48 KB gets Triton's opt-in (all the shared memory the device leaves beside the static)."""
    from babai_kernels.ssqr.matmul import compile_spec
    from babai_kernels.ssqr.tuning import TILES
    bm, bn, bk, warps, stages = TILES["small"][0]
    sig, consts = compile_spec(4, "bf16", 128, True, False, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                                                 num_warps=warps, num_stages=stages), 1)
    v = aot.bundle().find("ssqr", consts, sig, warps, stages)
    assert v.shared > aot.SMEM_DEFAULT
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    driver = aot._Driver(_FakeCuda(current=0x7777))
    fn = driver.function(v, torch.device("cuda", 1))
    assert fn.value == 0xF00 and driver.lib.current == 0x1001
    names = [c[0] for c in driver.lib.calls]
    assert names.index("cuInit") < names.index("cuModuleLoadData")
    (image,) = [c[1] for c in driver.lib.calls if c[0] == "cuModuleLoadData"]
    assert image == aot.bundle().cubins[v.cubin]
    assert ("cuModuleGetFunction", 0xD00, b"_ssqr_kernel") in driver.lib.calls
    (opt,) = [c[1] for c in driver.lib.calls if c[0] == "cuFuncSetAttribute"]
    assert opt[1] == aot.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert opt[2].value == _FakeCuda.OPTIN - _FakeCuda.STATIC
    assert driver.function(v, torch.device("cuda", 1)) is fn           # loaded once
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (10, 0))
    with pytest.raises(ValueError, match="sm_100"):
        aot._Driver(_FakeCuda()).function(v, torch.device("cuda", 0))
