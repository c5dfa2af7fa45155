"""Train a residual-stream Top-k SAE offline with sae-lens's own trainer.

SAE clamping (seed 000) needs an SAE at the edited layer, and the embedded SmolLM2-135M has no
public one. This module trains one on text that exists offline: the project's own text (emotion
scenarios, `examples/`, the shipped task data) plus continuations the model samples from short
prompts, so the SAE sees the model's own output distribution too.

The SAE is written in sae-lens's format, with the activation-normalisation factor folded into
its weights (`normalize_activations == "none"`): it reads and writes activations in the model's
own scale, which `sae_clamp`'s delta mode relies on. Results are cached under
`$CE_BENCH_HOME/saes/<model>/layer<L>-<hash of the settings and data>/`, written aside and
renamed when complete, with `training_report.json` (held-out explained variance, mean L0, dead
features, tokens, time, settings) next to the weights.

Example:
    >>> path = ensure_sae(20)                     # the cached SAE, or trained (minutes on CPU)
    >>> params = {"feature": 123, "strength": 8.0, "mode": "delta", "sae_path": str(path)}
    >>> load_report(path)["explained_variance"]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.models.embedded import EMBEDDED_NAME, ce_bench_home, resolve_pretrained
from ce_bench.sites import Site, attach_hook, module_path, model_dims

__all__ = ["SAESettings", "ensure_sae", "load_report", "sae_dir", "train_sae"]

REPORT_FILE = "training_report.json"
FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
HELD_OUT_ONE_IN = 10  # documents whose hash is 0 modulo this are evaluation-only
TOP_P = 0.95
GENERATION_BATCH = 32

# Openers for the model's own text: plain continuations and chat requests, many genres.
OPENERS = (
    "Once upon a time, in a small village by the sea,",
    "The best way to learn a new language is",
    "Yesterday I went to the market and",
    "In today's news, officials announced that",
    "Dear diary, today was",
    "The history of the Roman Empire begins",
    "To make a good cup of coffee, you",
    "Scientists have recently discovered that",
    "My favourite memory from childhood is",
    "The instructions for assembling the shelf say",
    "When I opened the door, I saw",
    "The main causes of the First World War were",
    "Here are three tips for staying productive:",
    "The football match ended with",
    "She looked at the letter and",
    "Photosynthesis is the process by which",
    "The review of the new restaurant said",
    "He had never been so",
    "In mathematics, a prime number is",
    "The customer called the support line because",
)
CHAT_REQUESTS = (
    "Write a short poem about the ocean.",
    "How do I boil an egg?",
    "Tell me a joke about computers.",
    "What should I pack for a weekend trip?",
    "Explain why the sky is blue.",
    "Give me advice for a job interview.",
    "Describe your ideal weekend.",
    "Summarise the plot of a fairy tale you know.",
    "I failed my exam today. What should I do?",
    "Write a thank-you note to a neighbour.",
)


@dataclass(frozen=True)
class SAESettings:
    """Everything that determines a trained SAE besides the model, the layer and the text.

    The defaults give a usable SAE for SmolLM2-135M in a few minutes on two CPU cores.
    """

    tokens: int = 200_000  # training tokens (activations seen, with repeats over the corpus)
    d_sae: int = 4608  # dictionary size (8 x d_model for SmolLM2-135M)
    k: int = 32  # active features per token
    lr: float = 2e-3
    context_size: int = 128
    batch_size: int = 1024  # SAE batch, in tokens: small, so a short run still takes many steps
    generated_texts: int = 192  # continuations sampled from the model
    generated_tokens: int = 48  # new tokens per continuation
    temperature: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"SAESettings.{f.name} must be a number, got {value!r}")
            if value < 0 or (value == 0 and f.name not in ("generated_texts", "seed")):
                raise ValueError(f"SAESettings.{f.name} must be positive, got {value!r}")
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} exceeds d_sae={self.d_sae}")
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch ({self.batch_size})")


@dataclass(frozen=True)
class Corpus:
    """Documents to train on and held-out documents to evaluate on."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


def sae_dir(layer: int, model: str = EMBEDDED_NAME, settings: SAESettings | None = None) -> Path:
    """Where the SAE for these settings and the current project text is cached."""
    settings = settings or SAESettings()
    key = _digest(
        {
            "format": FORMAT_VERSION,
            "model": model,
            "layer": layer,
            "settings": asdict(settings),
            "text": _digest(project_texts()),
        }
    )
    return ce_bench_home() / "saes" / _safe_name(model) / f"layer{layer}-{key[:10]}"


def ensure_sae(layer: int, model: str = EMBEDDED_NAME) -> Path:
    """The default-settings SAE for `layer`: the cached one, or trained now and cached."""
    return train_sae(layer, model)


def train_sae(
    layer: int,
    model: str = EMBEDDED_NAME,
    out: Path | None = None,
    tokens: int = SAESettings.tokens,
    d_sae: int = SAESettings.d_sae,
    k: int = SAESettings.k,
    seed: int = SAESettings.seed,
    lr: float = SAESettings.lr,
    context_size: int = SAESettings.context_size,
    batch_size: int = SAESettings.batch_size,
    generated_texts: int = SAESettings.generated_texts,
    force: bool = False,
    threads: int | None = None,
) -> Path:
    """Train a Top-k SAE on `resid_post` of `layer` and return its sae-lens directory.

    An existing complete SAE at the target (`out`, or the cache dir) is returned as is unless
    `force`. `threads` sets torch's CPU threads for the run (default: fewer when other
    processes already load the machine, where extra threads only slow every forward down).

    Example:
        >>> path = train_sae(20, tokens=400_000, d_sae=9216)
        >>> SAE.load_from_disk(path).cfg.metadata.hook_name
        'model.layers.20'
    """
    settings = SAESettings(
        tokens=tokens,
        d_sae=d_sae,
        k=k,
        lr=lr,
        context_size=context_size,
        batch_size=batch_size,
        generated_texts=generated_texts,
        seed=seed,
    )
    target = Path(out) if out is not None else sae_dir(layer, model, settings)
    if (target / REPORT_FILE).is_file() and not force:
        return target
    with _torch_threads(threads or _free_cores()):
        return _train(layer, model, settings, target)


def load_report(path: Path | str) -> dict[str, Any]:
    """The training report stored next to a trained SAE."""
    return json.loads((Path(path) / REPORT_FILE).read_text())


# --- text -----------------------------------------------------------------------------------


def project_texts() -> list[str]:
    """The project's own text: emotion scenarios, example sentences, shipped task data."""
    from ce_bench import emotions

    texts: list[str] = []
    try:
        for items in emotions.load_scenarios().values():
            texts.extend(items)
    except FileNotFoundError as err:  # the shipped set is optional for training text
        warnings.warn(f"training the SAE without emotion scenarios: {err}", stacklevel=2)
    for path in sorted(EXAMPLES.glob("*.txt")):
        texts.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    for path in sorted(_task_dir().glob("**/data/*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                texts.append("\n".join(dict.fromkeys(_prose(json.loads(line)))))
    return [text for text in dict.fromkeys(texts) if text]


def generation_prompts(tokenizer: Any) -> list[str]:
    """Short prompts for the model's own text: emotion prompts as the benchmark writes them,
    the shipped open-ended prompts, generic openers and chat requests."""
    from ce_bench import emotions

    prompts = list(OPENERS)
    try:
        for items in emotions.load_scenarios().values():
            templates = emotions.TEMPLATES
            prompts.extend(templates[i % len(templates)].fill(s) for i, s in enumerate(items))
    except FileNotFoundError:
        pass  # project_texts() already warned
    for path in sorted(_task_dir().glob("paired/data/*.jsonl")):
        prompts.extend(json.loads(line)["prompt"] for line in path.read_text().splitlines() if line)
    for request in CHAT_REQUESTS:
        messages = [{"role": "user", "content": request}]
        prompts.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
    return list(dict.fromkeys(prompts))


def model_texts(
    model: nn.Module, tokenizer: Any, model_name: str, settings: SAESettings
) -> list[str]:
    """Prompt + sampled continuation for `settings.generated_texts` prompts, cached per model."""
    if settings.generated_texts == 0:
        return []
    pool = generation_prompts(tokenizer)
    random.Random(settings.seed).shuffle(pool)
    prompts = pool[: settings.generated_texts]
    spec = {
        "model": model_name,
        "prompts": prompts,
        "new_tokens": settings.generated_tokens,
        "temperature": settings.temperature,
        "top_p": TOP_P,
        "seed": settings.seed,
    }
    cache = ce_bench_home() / "saes" / _safe_name(model_name) / f"generated-{_digest(spec)[:10]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    texts = _sample(model, tokenizer, prompts, settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.with_name(f".{cache.name}.{os.getpid()}")
    staging.write_text(json.dumps(texts))
    staging.replace(cache)
    return texts


@torch.no_grad()
def _sample(
    model: nn.Module, tokenizer: Any, prompts: list[str], settings: SAESettings
) -> list[str]:
    torch.manual_seed(settings.seed)
    tokenizer.padding_side = "left"
    texts = []
    for start in tqdm(range(0, len(prompts), GENERATION_BATCH), desc="sampling SAE training text"):
        batch = prompts[start : start + GENERATION_BATCH]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=settings.generated_tokens,
            do_sample=True,
            temperature=settings.temperature,
            top_p=TOP_P,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        texts.extend(prompt + continuation for prompt, continuation in zip(batch, new, strict=True))
    return texts


def split_corpus(texts: Iterable[str]) -> Corpus:
    """A deterministic train / held-out split by document hash (about 1 in 10 held out)."""
    train, held_out = [], []
    for text in dict.fromkeys(texts):
        (held_out if int(_digest(text), 16) % HELD_OUT_ONE_IN == 0 else train).append(text)
    return Corpus(tuple(train), tuple(held_out))


# --- training ---------------------------------------------------------------------------------


def _train(layer: int, model_name: str, settings: SAESettings, target: Path) -> Path:
    from ce_bench.models.embedded import load_model

    started = time.perf_counter()
    hf_model, tokenizer = load_model(model_name, "cpu")
    hook_name = module_path(hf_model, Site("resid_post", layer))  # checks the layer exists
    corpus = split_corpus(
        project_texts() + model_texts(hf_model, tokenizer, model_name, settings)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        train_started = time.perf_counter()
        _run_sae_lens(model_name, hook_name, model_dims(hf_model).hidden_size, corpus, settings,
                      tokenizer.all_special_ids, staging)
        train_seconds = time.perf_counter() - train_started
        stats = evaluate_sae(staging, hf_model, tokenizer, layer, corpus.held_out,
                             settings.context_size)
        report = {
            "model": model_name,
            "layer": layer,
            "hook_name": hook_name,
            **stats,
            "tokens_trained": settings.tokens,
            "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(),
            "corpus": {"train_documents": len(corpus.train),
                       "held_out_documents": len(corpus.held_out)},
            "settings": asdict(settings),
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _run_sae_lens(
    model_name: str,
    hook_name: str,
    d_in: int,
    corpus: Corpus,
    settings: SAESettings,
    special_ids: list[int],
    out: Path,
) -> None:
    """sae-lens's runner on the corpus; writes the inference SAE (scale folded in) to `out`."""
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    steps = settings.tokens // settings.batch_size
    train = list(corpus.train)
    random.Random(settings.seed).shuffle(train)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=settings.d_sae,
            k=settings.k,
            # scaled to mean norm sqrt(d_in) while training; sae-lens folds the factor back
            normalize_activations="expected_average_only_in",
        ),
        model_name=str(resolve_pretrained(model_name)),
        model_class_name="AutoModelForCausalLM",
        hook_name=hook_name,
        is_dataset_tokenized=False,
        streaming=False,
        context_size=settings.context_size,
        prepend_bos=True,  # the BOS takes the attention-sink activation (norm ~100x the rest)
        exclude_special_tokens=special_ids,
        training_tokens=settings.tokens,
        train_batch_size_tokens=settings.batch_size,
        store_batch_size_prompts=8,
        n_batches_in_buffer=4 * max(1, settings.batch_size // settings.context_size),
        n_batches_for_norm_estimate=max(1, 4096 // settings.batch_size),
        lr=settings.lr,
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=steps // 5,
        dead_feature_window=max(1, steps // 10),
        feature_sampling_window=max(1, steps // 2),
        device="cpu",
        seed=settings.seed,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(out),
        verbose=False,
    )
    torch.manual_seed(settings.seed)
    dataset = Dataset.from_dict({"text": train})
    with _sae_lens_quiet(), _restored_signal_handlers():
        LanguageModelSAETrainingRunner(cfg, override_dataset=dataset).run()


@torch.no_grad()
def evaluate_sae(
    path: Path,
    model: nn.Module,
    tokenizer: Any,
    layer: int,
    texts: Iterable[str],
    context_size: int = SAESettings.context_size,
) -> dict[str, float | int]:
    """Explained variance, mean L0 and dead-feature share of the SAE at `path` on `texts`.

    Activations are read the way training read them (BOS first, special tokens left out) and
    reconstructed by the SAE as saved, so this also checks the saved SAE works in model scale.
    """
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device="cpu")
    acts = torch.cat(list(_token_activations(model, tokenizer, layer, texts, context_size)))
    if acts.shape[0] == 0:
        raise ValueError("no held-out tokens to evaluate the SAE on")
    codes = sae.encode(acts)
    recon = sae.decode(codes)
    residual = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    active = codes != 0
    return {
        "explained_variance": round(float(1 - residual / total), 4),
        "mean_l0": round(float(active.sum(-1).float().mean()), 2),
        "dead_feature_share": round(float((~active.any(0)).float().mean()), 4),
        "eval_tokens": int(acts.shape[0]),
    }


def _token_activations(
    model: nn.Module, tokenizer: Any, layer: int, texts: Iterable[str], context_size: int
) -> Iterator[torch.Tensor]:
    """Float32 activations at `resid_post` of `layer`, one row per non-special token."""
    special = torch.tensor(tokenizer.all_special_ids)
    captured: list[torch.Tensor] = []
    handle = attach_hook(model, Site("resid_post", layer), lambda h: captured.append(h.float()))
    try:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: context_size - 1]
            ids = torch.tensor([[tokenizer.bos_token_id, *ids]])
            captured.clear()
            model(ids)
            yield captured[0][0][~torch.isin(ids[0], special)]
    finally:
        handle.remove()


def _publish(staging: Path, target: Path) -> None:
    """Move the finished SAE into place; a killed run never leaves a half-written target."""
    if target.exists():
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:  # another process published first
        if not (target / REPORT_FILE).is_file():
            raise


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _free_cores() -> int:
    """Cores not busy with other processes (at least 1): on a loaded machine, OpenMP threads
    beyond the free cores wait on each other and a forward pass gets several times slower."""
    busy = os.getloadavg()[0]
    return max(1, min(torch.get_num_threads(), round((os.cpu_count() or 1) - busy)))


@contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    """sae-lens's runner installs SIGINT/SIGTERM handlers and never removes them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def _sae_lens_quiet() -> Iterator[None]:
    """Silence warnings that are expected here: untokenised in-memory text, several epochs."""
    with warnings.catch_warnings():
        for message in ("Dataset is not tokenized", "The training dataset contains fewer",
                        "All samples in the training dataset"):
            warnings.filterwarnings("ignore", message=message)
        yield


def _prose(record: Any) -> Iterator[str]:
    """The sentences in a task record (questions, choices, contexts), not ids or labels."""
    if isinstance(record, str):
        if len(record.split()) >= 2 or (record.isalpha() and len(record) >= 3):
            yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from _prose(value)
    elif isinstance(record, list):
        for value in record:
            yield from _prose(value)


def _task_dir() -> Path:
    import ce_bench.tasks

    return Path(ce_bench.tasks.__file__).parent


def _safe_name(model: str) -> str:
    return model.strip("/").replace("/", "__")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
