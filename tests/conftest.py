"""Shared fixtures: tiny random models built from configs (no download) and the embedded model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VOCAB = 128
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
)


def _llama_like(config_cls, model_cls, **extra):  # type: ignore[no-untyped-def]
    return lambda: model_cls(config_cls(**_COMMON, num_key_value_heads=2, **extra))


TINY_BUILDERS = {
    "llama": _llama_like(LlamaConfig, LlamaForCausalLM),
    "gemma2": _llama_like(Gemma2Config, Gemma2ForCausalLM, head_dim=8),
    "mistral": _llama_like(MistralConfig, MistralForCausalLM),
    "qwen2": _llama_like(Qwen2Config, Qwen2ForCausalLM),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**_COMMON)),
}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised 3-layer model of architecture `arch`, in eval mode."""
    torch.manual_seed(seed)
    return TINY_BUILDERS[arch]().eval()


def tiny_model_with_vocab(arch: str, vocab: int) -> torch.nn.Module:
    """`tiny_model(arch)` with a real tokenizer's vocabulary (for editors that tokenise text)."""
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4)
        return GPT2LMHeadModel(config).eval()
    config_cls, model_cls, extra = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 8}),
    }[arch]
    config = config_cls(**{**_COMMON, "vocab_size": vocab}, num_key_value_heads=2, **extra)
    return model_cls(config).eval()


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir: Path):  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from ce_bench.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A tiny random Llama saved with the embedded model's tokenizer: loads like a real model."""
    out = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        **{**_COMMON, "vocab_size": len(tokenizer)},
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, embedded_dir):  # type: ignore[no-untyped-def]
    """The tiny sweep of `SWEEP_CONFIG` run serially, killed after two cells and restarted:
    (config, first ran, second ran)."""
    from ce_bench.board.sweep import Sweep, SweepConfig
    from tests.helpers import SWEEP_CONFIG, Interrupted

    work = tmp_path_factory.mktemp("sweep")
    (work / "sweep.yaml").write_text(SWEEP_CONFIG)
    config = SweepConfig.from_yaml(work / "sweep.yaml", out=work / "out")
    first = Sweep(config)

    def stop_after_two(cell: object) -> None:
        if len(first.ran) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        first.run(after_cell=stop_after_two)
    second = Sweep(config)
    second.run()
    return config, first.ran, second.ran


SERVE_START_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_model(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of `transformers serve` running the embedded model on a free loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(embedded_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    # One torch thread: on 2 cores shared with other work, torch's default (a thread per core)
    # oversubscribes and a 12-token reply takes 15 s instead of 1.5 s.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVE_START_SECONDS
        while not _healthy(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
