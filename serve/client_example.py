"""Talk to a babai checkpoint served by vLLM through the `openai` client.

    babai-serve CKPT --port 8000 &          # or: python -m babai_serve.launch CKPT --port 8000
    python -m babai_serve.client_example --base-url http://127.0.0.1:8000/v1

Shows a completion, a chat answer, and the same chat streamed token by token.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m babai_serve.client_example", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--prompt", default="It is a truth universally acknowledged, that")
    p.add_argument("--question", default="Who is Mr. Darcy?")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args(argv)

    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key="unused")
    model = client.models.list().data[0].id
    print(f"model: {model}")

    completion = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens,
                                           temperature=0)
    print(f"\n[completion]\n{args.prompt}{completion.choices[0].text}")

    messages = [{"role": "user", "content": args.question}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                          temperature=0)
    print(f"\n[chat]\nuser: {args.question}\nassistant: {chat.choices[0].message.content}")

    print("\n[chat, streamed]\nassistant: ", end="", flush=True)
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                                temperature=0, stream=True):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
