"""quantizer/fingerprint.py: checkpoint caches are keyed by the code that writes checkpoints."""
from pathlib import Path

from babai_quantizer.fingerprint import quantizer_fingerprint, source_digest


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_source_digest_follows_bytes_and_paths_and_ignores_other_files(tmp_path):
    a = _tree(tmp_path / "a", {"x.py": b"one", "sub/y.py": b"two"})
    base = source_digest(a, ["**/*.py"])
    assert base == source_digest(_tree(tmp_path / "b", {"x.py": b"one", "sub/y.py": b"two"}), ["**/*.py"])
    _tree(a, {"notes.txt": b"ignored", "__pycache__/x.cpython-311.py": b"cache"})
    assert source_digest(a, ["**/*.py"]) == base
    (a / "sub/y.py").write_bytes(b"two!")
    assert source_digest(a, ["**/*.py"]) != base
    assert source_digest(_tree(tmp_path / "c", {"x.py": b"one", "sub/z.py": b"two"}), ["**/*.py"]) != base


def test_quantizer_fingerprint_covers_the_quantizer_and_the_packers():
    import babai_kernels
    import babai_quantizer
    from babai_quantizer import fingerprint

    quantizer = Path(babai_quantizer.__file__).resolve().parent
    kernels = Path(babai_kernels.__file__).resolve().parent
    fp = quantizer_fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == source_digest(quantizer, fingerprint.QUANTIZER_SOURCES)[:8] + \
        source_digest(kernels, fingerprint.KERNEL_SOURCES)[:8]
    covered = {p.resolve() for pat in fingerprint.KERNEL_SOURCES for p in kernels.glob(pat)}
    for module in ("contract.py", "hptq/pack.py", "ssqr/pack.py", "gptq.py"):
        assert (kernels / module).resolve() in covered
    assert (quantizer / "formats" / "hptq.py").resolve() in set(quantizer.glob("**/*.py"))
