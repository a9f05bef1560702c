"""serve/launch.py without vLLM: command line, option parsing, startup failures and cleanup."""
from __future__ import annotations

import json
import sys

import pytest

from babai_serve import launch
from tests.fixtures.tiny_checkpoint import build_tiny_checkpoint


def test_command_uses_module_entry_point_and_babai():
    cmd = launch.server_command("/ckpt", ["--enforce-eager"], "127.0.0.1", 8123)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--quantization") + 1] == "babai" and cmd[cmd.index("--model") + 1] == "/ckpt"
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[-1] == "--enforce-eager"


def test_command_without_quantization():
    cmd = launch.server_command("/ckpt", [], "127.0.0.1", 8123, quantization=None)
    assert "--quantization" not in cmd and cmd[cmd.index("--model") + 1] == "/ckpt"


@pytest.mark.parametrize("config, babai", [
    ({"model_type": "llama"}, False),                                          # unquantized folder
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, False),      # stock GPTQ export
    ({"quantization_config": {"quant_method": "babai", "version": 9}}, True),   # babai (invalid: still babai)
    ({"quantization_config": {"version": 1}}, True),                            # no method: validated as babai
])
def test_quantization_flag_follows_checkpoint(tmp_path, config, babai):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert launch.is_babai_checkpoint(tmp_path) is babai


def test_plain_and_gptq_folders_start_without_quantization_flag(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "gptq", "bits": 4}}')
    assert "--quantization" not in launch.BabaiServer(tmp_path, port=8123).command


def test_babai_checkpoint_and_hub_name_get_quantization_flag(checkpoint):
    for ckpt in (checkpoint, "org/some-model"):
        cmd = launch.BabaiServer(ckpt, port=8123).command
        assert cmd[cmd.index("--quantization") + 1] == "babai"


def test_pop_option():
    args = ["--port", "9000", "--host=0.0.0.0", "--dtype", "half"]
    assert launch._pop_option(args, "--port") == "9000"
    assert launch._pop_option(args, "--host") == "0.0.0.0"
    assert launch._pop_option(args, "--seed") is None and args == ["--dtype", "half"]


def test_bad_checkpoint_fails_before_starting(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"quantization_config": {"quant_method": "babai", "format": "ssqr", "version": 9}}')
    with pytest.raises(ValueError, match="version=9"):
        launch.BabaiServer(tmp_path)
    assert launch.main([str(tmp_path)]) == 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("launch") / "tiny"
    build_tiny_checkpoint(path, "ssqr")
    return path


def test_server_that_exits_reports_its_log(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "server_command",
                        lambda *a: [sys.executable, "-c", "import sys; print('engine boom'); sys.exit(3)"])
    server = launch.BabaiServer(checkpoint, startup_timeout=60, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*engine boom"):
        server.start()
    assert server.log_path.exists()  # kept for the user to read


def test_unhealthy_server_is_stopped(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "server_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(600)"])
    server = launch.BabaiServer(checkpoint, startup_timeout=1, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="not healthy after 1 s"):
        server.start()
    assert server.process.poll() is not None  # killed, not left running
