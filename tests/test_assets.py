"""The embedded assets: R database reader, checksummed cache, Austen splits, converted SmolLM2 model."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import shutil
import struct
import zlib

import pytest
import torch
from safetensors import safe_open

from babai_quantizer import assets
from babai_quantizer.assets.cache import MANIFEST, Asset, AssetError, ensure, verify_folder
from babai_quantizer.assets.rdata import RDataError, read_lazyload_db, read_record, unserialize

# ---------------------------------------------------------------- a tiny R XDR serializer (test side)
# Written from "R Internals: Serialization formats", independently of quantizer/assets/rdata.py.


def xdr_ints(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def r_header(version: int = 3) -> bytes:
    head = b"X\n" + xdr_ints(version, 0x040201, 0x020300 if version == 2 else 0x030500)
    return head + (xdr_ints(5) + b"UTF-8" if version == 3 else b"")


def r_char(s: str | None) -> bytes:
    if s is None:
        return xdr_ints(9, -1)
    raw = s.encode("utf-8")
    levels = 64 if s.isascii() else 8  # ASCII_MASK / UTF8_MASK
    return xdr_ints(9 | levels << 12, len(raw)) + raw


def r_strings(items) -> bytes:
    return xdr_ints(16, len(items)) + b"".join(r_char(s) for s in items)


def r_names_attribute(names, first_use: bool) -> bytes:
    """Attribute pairlist `names = <names>`; the symbol is written in full once, then as a reference."""
    symbol = xdr_ints(1) + r_char("names") if first_use else xdr_ints((1 << 8) | 255)
    return xdr_ints(2 | 1 << 10) + symbol + r_strings(names) + xdr_ints(254)


def r_named_list(items: dict, body, first_use: bool = True) -> bytes:
    return (xdr_ints(19 | 1 << 9, len(items)) + b"".join(body(v) for v in items.values())
            + r_names_attribute(list(items), first_use))


def r_record(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + zlib.compress(payload)


def write_lazyload_db(stem, objects: dict[str, list[str | None]], version: int = 3) -> None:
    """Write `<stem>.rdb` / `<stem>.rdx` holding character vectors, like R's makeLazyLoadDB."""
    records, where, offset = [], {}, 0
    for name, lines in objects.items():
        records.append(r_record(r_header(version) + r_strings(lines)))
        where[name] = [offset, len(records[-1])]
        offset += len(records[-1])
    stem.with_suffix(".rdb").write_bytes(b"".join(records))
    # list(variables = list(<name> = c(offset, length), ...), references = list(), compressed = TRUE);
    # the inner names attribute comes first in the stream, so it defines the `names` symbol
    index = {"variables": r_named_list(where, lambda pos: xdr_ints(13, 2, *pos), first_use=True),
             "references": xdr_ints(19, 0), "compressed": xdr_ints(10, 1, 1)}
    payload = (r_header(version) + xdr_ints(19 | 1 << 9, len(index)) + b"".join(index.values())
               + r_names_attribute(list(index), first_use=False))
    stem.with_suffix(".rdx").write_bytes(gzip.compress(payload))


# ---------------------------------------------------------------- R database reader


@pytest.mark.parametrize("version", [2, 3])
def test_rdata_reads_synthetic_database(tmp_path, version):
    novels = {"firstnovel": ["It is a truth universally acknowledged,", "", None, "naïve café — “quoted”"],
              "second": ["CHAPTER I"] * 3}
    write_lazyload_db(tmp_path / "Rdata", novels, version)
    assert read_lazyload_db(tmp_path / "Rdata") == novels


def test_rdata_rejects_bad_input(tmp_path):
    with pytest.raises(RDataError, match="not XDR"):
        unserialize(b"A\n1\n", "ascii-file")
    with pytest.raises(RDataError, match="truncated"):
        unserialize(r_header() + r_strings(["abc"])[:-1], "short")
    with pytest.raises(RDataError, match="unsupported R object type 4"):
        unserialize(r_header() + xdr_ints(4), "environment")
    record = r_record(r_header() + r_strings(["x"]))
    (tmp_path / "bad.rdb").write_bytes(record[:4] + b"not zlib")
    with pytest.raises(RDataError, match="not a zlib stream"):
        read_record(tmp_path / "bad.rdb", 0, 12)


# ---------------------------------------------------------------- checksummed cache, on a tiny fake asset


class FakeBuilder:
    """Writes two small files (one in a subfolder) and counts its calls; can be told to fail."""

    def __init__(self):
        self.calls, self.fail = 0, False

    def __call__(self, out):
        self.calls += 1
        (out / "a.txt").write_text("alpha\n")
        (out / "sub").mkdir()
        (out / "sub" / "b.bin").write_bytes(bytes(range(256)))
        if self.fail:
            raise AssetError("fake build failed halfway")


@pytest.fixture
def fake(tmp_path):
    builder = FakeBuilder()
    return Asset("fake", builder), builder, tmp_path / "cache"


def test_cache_builds_once_and_records_checksums(fake):
    asset, builder, root = fake
    folder = ensure(asset, root)
    assert ensure(asset, root) == folder and builder.calls == 1
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["files"]["sub/b.bin"]["sha256"] == hashlib.sha256(bytes(range(256))).hexdigest()
    assert verify_folder(folder) == []


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "sub" / "b.bin").write_bytes(bytes(range(255)) + b"\x00"), "sha256 differs"),
    (lambda f: (f / "a.txt").write_text("alpha\nmore\n"), "size"),
    (lambda f: (f / "sub" / "b.bin").unlink(), "missing"),
    (lambda f: (f / MANIFEST).unlink(), "missing"),
    (lambda f: (f / MANIFEST).write_text("{not json"), "unreadable"),
])
def test_cache_detects_corruption_and_rebuilds(fake, caplog, damage, problem):
    asset, builder, root = fake
    folder = ensure(asset, root)
    damage(folder)
    assert any(problem in p for p in verify_folder(folder))
    with caplog.at_level(logging.WARNING, logger="babai_quantizer.assets"):
        assert ensure(asset, root) == folder
    assert builder.calls == 2
    assert "corrupt, rebuilding" in caplog.text
    assert verify_folder(folder) == [] and (folder / "sub" / "b.bin").read_bytes() == bytes(range(256))


def test_failed_build_leaves_no_partial_asset(fake):
    asset, builder, root = fake
    builder.fail = True
    with pytest.raises(AssetError, match="failed halfway"):
        ensure(asset, root)
    assert not (root / "fake").exists()
    builder.fail = False
    folder = ensure(asset, root)
    builder.fail = True
    with pytest.raises(AssetError):
        ensure(asset, root, force=True)
    assert verify_folder(folder) == []  # the intact old copy survives a failed rebuild
    assert [p.name for p in root.iterdir() if not p.name.startswith(".fake.lock")] == ["fake"]


def test_real_text_asset_corruption_is_rebuilt(austen_text, tmp_path, monkeypatch):
    real_folder = assets.text_path("eval").parent
    monkeypatch.setenv("VLLM_BABAI_CACHE", str(tmp_path))
    shutil.copytree(real_folder, tmp_path / real_folder.name)
    with open(tmp_path / real_folder.name / "eval.txt", "a", encoding="utf-8") as f:
        f.write("\nA line that Jane Austen never wrote.")
    assert assets.verify("text")["text"]
    assert assets.text_path("eval").read_text(encoding="utf-8") == austen_text["eval"]
    assert assets.verify("text") == {"text": []}


# ---------------------------------------------------------------- Austen text splits

CALIB_MARKS = {"emma": "Emma Woodhouse", "mansfieldpark": "Fanny Price",
               "northangerabbey": "Catherine Morland", "sensesensibility": "Elinor"}
EVAL_MARKS = {"prideprejudice": "Elizabeth Bennet"}


def test_austen_splits_nonempty_and_disjoint(austen_text):
    calib, evaluation = austen_text["calib"], austen_text["eval"]
    assert len(calib) > 2_000_000 and len(evaluation) > 500_000
    assert evaluation.startswith("PRIDE AND PREJUDICE") and calib.startswith("EMMA")
    for mark in CALIB_MARKS.values():
        assert mark in calib and mark not in evaluation
    for mark in EVAL_MARKS.values():
        assert mark in evaluation and mark not in calib
    for name in ("Wentworth", "Anne Elliot"):  # Persuasion is in neither split
        assert name not in calib and name not in evaluation
    long_lines = [{line for line in text.split("\n") if len(line) > 50} for text in (calib, evaluation)]
    assert long_lines[0] and long_lines[1] and not long_lines[0] & long_lines[1]


# ---------------------------------------------------------------- converted SmolLM2 model


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from babai_quantizer.evaluate import load_for_eval

    return load_for_eval(smollm2_dir)


def test_model_folder_loads_with_its_rope_theta(smollm2_dir, smollm2):
    from transformers import AutoConfig

    model, _ = smollm2
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["hidden_size"] == 576 and "quantization_config" not in config
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert AutoConfig.from_pretrained(smollm2_dir).hidden_size == 576
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    d = model.config.head_dim
    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), inv_freq)


def test_tokenizer_round_trips_text(smollm2, austen_text):
    _, tokenizer = smollm2
    passage = austen_text["eval"][2000:6000]
    ids = tokenizer(passage, add_special_tokens=False)["input_ids"]
    assert 500 < len(ids) < len(passage) and tokenizer.decode(ids) == passage
    assert tokenizer.decode(tokenizer("naïve — “quoted”")["input_ids"]) == "naïve — “quoted”"


def test_model_predicts_austen_better_than_shuffled(smollm2, austen_text):
    """Perplexity (babai_quantizer.evaluate) on 1 window equals transformers' own loss, and real text scores
    far better than the same tokens shuffled."""
    from babai_quantizer.evaluate import evaluate_text

    model, tokenizer = smollm2
    text = austen_text["eval"][:20_000]
    result = evaluate_text(model, tokenizer, text, window=256, max_windows=2)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:512]).view(2, 256)
    with torch.no_grad():
        hf_loss = sum(model(w[None], labels=w[None]).loss.item() for w in ids) / 2  # mean over 255 tokens each
    assert result.windows == 2 and result.scored_tokens == 510
    assert math.isclose(result.ppl, math.exp(hf_loss), rel_tol=2e-3)
    shuffled = ids.flatten()[torch.randperm(512, generator=torch.Generator().manual_seed(0))]
    shuffled_ppl = evaluate_text(model, tokenizer, tokenizer.decode(shuffled), window=256, max_windows=2).ppl
    assert result.ppl < 40 < shuffled_ppl
