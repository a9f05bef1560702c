"""Local lm-evaluation-harness tasks over the Austen evaluation split (Pride and Prejudice): no hub.

    python -m eval.austen_tasks [--out DIR]       # writes DIR/*.jsonl and DIR/*.yaml, prints DIR

Then `lm_eval --include_path DIR --tasks austen_cloze,austen_ppl ...` (README, "Evaluate").
DIR defaults to `<asset cache>/lm-eval-austen` (`~/.cache/vllm-babai`, or VLLM_BABAI_CACHE).

    austen_cloze  LAMBADA-style: each paragraph of ≥ 40 words without its last word; the model must
                  predict that word (acc: greedy match; perplexity of the word). loglikelihood requests.
    austen_ppl    the paragraphs grouped into ~2,000-character documents, scored as rolling
                  log-likelihood (word_perplexity, byte_perplexity, bits_per_byte), as lm-eval's wikitext.

The text is the asset cache's eval split, re-flowed: Project Gutenberg's wrapped lines joined within
a paragraph (blank lines separate paragraphs). Deterministic: same text, same documents.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

MIN_WORDS = 40
DOC_CHARS = 2000
LAST_WORD = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]+)(?P<tail>[.!?;:,'\"”’)_]*)$", re.S)

CLOZE_YAML = """task: austen_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
PPL_YAML = """task: austen_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with their wrapped lines joined by single spaces."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def cloze_docs(paras: list[str]) -> list[dict]:
    """{"context", "target"} for every paragraph of ≥ MIN_WORDS words that ends in a plain word."""
    docs = []
    for p in paras:
        m = LAST_WORD.match(p)
        if len(p.split()) >= MIN_WORDS and m:
            docs.append({"context": m["context"], "target": m["word"]})
    return docs


def ppl_docs(paras: list[str]) -> list[dict]:
    """{"text"}: consecutive paragraphs joined by blank lines until a document reaches DOC_CHARS."""
    docs, current = [], []
    for p in paras:
        current.append(p)
        if sum(map(len, current)) >= DOC_CHARS:
            docs.append({"text": "\n\n".join(current)})
            current = []
    if current:
        docs.append({"text": "\n\n".join(current)})
    return docs


def write_tasks(out: Path, text: str) -> dict[str, int]:
    """Write the two tasks' JSONL data and YAML configs into `out`; {task: number of documents}."""
    out.mkdir(parents=True, exist_ok=True)
    paras = paragraphs(text)
    counts = {}
    for task, docs, yaml in (("austen_cloze", cloze_docs(paras), CLOZE_YAML), ("austen_ppl", ppl_docs(paras), PPL_YAML)):
        data = out / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (out / f"{task}.yaml").write_text(yaml.format(data=json.dumps(str(data.resolve()))))
        counts[task] = len(docs)
    return counts


def main(argv=None) -> int:
    from babai_quantizer import assets

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="task folder (default: <asset cache>/lm-eval-austen)")
    args = p.parse_args(argv)
    out = args.out or assets.cache_dir() / "lm-eval-austen"
    counts = write_tasks(out, assets.text_path("eval").read_text(encoding="utf-8"))
    print(f"{out}  ({', '.join(f'{t}: {n} documents' for t, n in counts.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
