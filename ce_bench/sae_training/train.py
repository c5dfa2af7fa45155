"""Training and evaluation: cached activations, sae-lens's runner, the report (see the package)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.embedded import load_model, resolve_pretrained
from ce_bench.runtime import EMBEDDED_NAME, free_cores, torch_threads
from ce_bench.sae_training.text import (
    Corpus,
    digest,
    model_cache_dir,
    model_texts,
    project_texts,
    split_corpus,
)
from ce_bench.sites import Site, StopForward, attach_hook, module_path

REPORT_FILE = "training_report.json"
FORMAT_VERSION = 1
SINK_NORM_RATIO = 10.0  # activations this many times the median norm are attention sinks
LM_BATCH = 8  # contexts per forward pass when caching activations


@dataclass(frozen=True)
class SAESettings:
    """Everything that determines a trained SAE besides the model, the layer and the text.

    The defaults give a usable SAE for SmolLM2-135M in a few minutes on two CPU cores (layer
    20: held-out explained variance 0.80 in 4.5 minutes on two cores shared with other jobs).
    """

    tokens: int = 300_000  # training tokens (activations seen, repeating the text)
    d_sae: int = 4608  # dictionary size (8 x d_model for SmolLM2-135M)
    k: int = 32  # active features per token
    lr: float = 2e-3
    batch_size: int = 512  # SAE batch in tokens: small, so a short run still takes many steps
    context_size: int = 128
    generated_texts: int = 192  # continuations sampled from the model (0: none)
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


def sae_dir(layer: int, model: str = EMBEDDED_NAME, settings: SAESettings | None = None) -> Path:
    """Where the SAE for these settings and the current project text is cached."""
    settings = settings or SAESettings()
    spec = {
        "format": FORMAT_VERSION,
        "model": model,
        "layer": layer,
        "settings": asdict(settings),
        "text": digest(project_texts()),
    }
    return model_cache_dir(model) / f"layer{layer}-{digest(spec)[:10]}"


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
    batch_size: int = SAESettings.batch_size,
    context_size: int = SAESettings.context_size,
    generated_texts: int = SAESettings.generated_texts,
    generated_tokens: int = SAESettings.generated_tokens,
    temperature: float = SAESettings.temperature,
    force: bool = False,
    threads: int | None = None,
) -> Path:
    """Train a Top-k SAE on `resid_post` of `layer` and return its sae-lens directory.

    A complete SAE already at the target (`out`, else the cache dir) is returned as is unless
    `force`. `threads` sets torch's CPU threads for the run; by default the cores other
    processes leave free, because surplus OpenMP threads on a loaded machine wait on each other
    and make every forward pass several times slower.

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
        batch_size=batch_size,
        context_size=context_size,
        generated_texts=generated_texts,
        generated_tokens=generated_tokens,
        temperature=temperature,
        seed=seed,
    )
    target = Path(out) if out is not None else sae_dir(layer, model, settings)
    if (target / REPORT_FILE).is_file() and not force:
        return target
    with torch_threads(threads or free_cores()):
        return _train(layer, model, settings, target)


def load_report(path: Path | str) -> dict[str, Any]:
    """The training report stored next to a trained SAE."""
    return json.loads((Path(path) / REPORT_FILE).read_text())


# --- activations ------------------------------------------------------------------------------


def corpus_texts(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    settings: SAESettings | None = None,
    bf16: bool = False,
) -> list[str]:
    """The offline text an SAE of `model` trains on: the project's own and what the model
    samples (cached per model, so the SAEs of every layer and the editors' C share it)."""
    settings = settings or SAESettings()
    sampled = model_texts(
        model,
        tokenizer,
        model_name,
        settings.generated_texts,
        settings.generated_tokens,
        settings.temperature,
        settings.seed,
        bf16=bf16,
    )
    return project_texts() + sampled


@torch.no_grad()
def token_activations(
    model: nn.Module,
    tokenizer: Any,
    layer: int,
    texts: Iterable[str],
    context_size: int,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Float32 activations at `resid_post` of `layer` for ordinary tokens of `texts`.

    Texts are packed as sae-lens packs them (contexts of `context_size` tokens starting with
    BOS, documents separated by BOS; the last partial context is dropped). `bf16` runs the
    model under bf16 autocast (for training data: per-token error ~0.7%). Returns the
    activations, their token ids, and how many attention-sink activations were left out.
    """
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    bos = tokenizer.bos_token_id
    docs = (
        torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        for text in texts
    )
    contexts = list(
        concat_and_batch_sequences(
            docs, context_size, begin_batch_token_id=bos, sequence_separator_token_id=bos
        )
    )
    if not contexts:
        raise ValueError(f"not enough text for one context of {context_size} tokens")
    ids = torch.stack(contexts)
    captured: list[torch.Tensor] = []
    handle = attach_hook(model, Site("resid_post", layer), _capture_and_stop(captured))
    try:
        for start in tqdm(range(0, len(ids), LM_BATCH), desc=f"activations at layer {layer}"):
            with suppress(StopForward), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(ids[start : start + LM_BATCH], use_cache=False)
    finally:
        handle.remove()
    acts = torch.cat(captured).flatten(0, 1)
    ids = ids.flatten()
    ordinary = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    norms = acts.norm(dim=-1)
    sink = norms > SINK_NORM_RATIO * norms[ordinary].median()
    keep = ordinary & ~sink
    return acts[keep], ids[keep], int((ordinary & sink).sum())


def _capture_and_stop(captured: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    def capture(h: torch.Tensor) -> None:
        captured.append(h.detach().float().cpu())
        raise StopForward

    return capture


def _write_activation_cache(
    acts: torch.Tensor, ids: torch.Tensor, hook_name: str, row: int, seed: int, path: Path
) -> None:
    """Shuffled token activations in rows of `row`, in the dataset layout sae-lens reads with
    `use_cached_activations` (a column named by the hook, plus `token_ids`)."""
    from datasets import Array2D, Dataset, Features, Sequence, Value

    n_rows = len(acts) // row
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
    order = order[: n_rows * row]
    features = Features(
        {
            hook_name: Array2D((row, acts.shape[1]), "float32"),
            "token_ids": Sequence(Value("int32"), length=row),
        }
    )
    columns = {
        hook_name: acts[order].view(n_rows, row, -1).numpy(),
        "token_ids": ids[order].view(n_rows, row).int().numpy(),
    }
    Dataset.from_dict(columns, features=features).save_to_disk(str(path))


# --- training ---------------------------------------------------------------------------------


def _train(layer: int, model_name: str, settings: SAESettings, target: Path) -> Path:
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(now - clock, 1)
        clock = now

    hf_model, tokenizer = load_model(model_name, "cpu")
    hook_name = module_path(hf_model, Site("resid_post", layer))  # checks the layer exists
    texts = corpus_texts(hf_model, tokenizer, model_name, settings, native_bf16())
    corpus = split_corpus(texts)
    lap("text")
    acts, ids, sinks = token_activations(
        hf_model, tokenizer, layer, corpus.train, settings.context_size, bf16=native_bf16()
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        cache = staging / "activations"
        row = min(settings.context_size, len(acts) // LM_BATCH)
        _write_activation_cache(acts, ids, hook_name, row, settings.seed, cache)
        lap("activations")
        sae_path = staging / "sae"
        _run_sae_lens(model_name, hook_name, acts.shape[1], corpus, settings, row, cache, sae_path)
        shutil.rmtree(cache)
        lap("train")
        held_acts, _, held_sinks = token_activations(
            hf_model, tokenizer, layer, corpus.held_out, settings.context_size
        )
        stats = evaluate_sae(sae_path, held_acts)
        lap("evaluate")
        steps = -(-settings.tokens // settings.batch_size)
        report = {
            "model": model_name,
            "layer": layer,
            "hook_name": hook_name,
            **stats,
            "tokens_trained": steps * settings.batch_size,
            "train_seconds": seconds["train"],
            "wall_seconds": round(sum(seconds.values()), 1),
            "seconds": seconds,
            "threads": torch.get_num_threads(),
            "bf16": native_bf16(),
            "corpus": {
                "train_documents": len(corpus.train),
                "held_out_documents": len(corpus.held_out),
                "generated_documents": len(texts) - len(project_texts()),
                "train_tokens": len(acts),
                "sink_tokens_left_out": sinks + held_sinks,
            },
            "settings": asdict(settings),
        }
        (sae_path / REPORT_FILE).write_text(json.dumps(report, indent=2))
        publish(sae_path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _run_sae_lens(
    model_name: str,
    hook_name: str,
    d_in: int,
    corpus: Corpus,
    settings: SAESettings,
    row: int,
    cache: Path,
    out: Path,
) -> None:
    """sae-lens's runner on the cached activations; writes the inference SAE to `out`."""
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    steps = -(-settings.tokens // settings.batch_size)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=settings.d_sae,
            k=settings.k,
            normalize_activations="expected_average_only_in",  # folded back in at the end
        ),
        model_name=str(resolve_pretrained(model_name)),
        model_class_name="AutoModelForCausalLM",
        hook_name=hook_name,
        use_cached_activations=True,
        cached_activations_path=str(cache),
        is_dataset_tokenized=False,
        context_size=row,  # the cache's row length
        prepend_bos=True,
        exclude_special_tokens=True,  # already left out of the cache; recorded in the metadata
        training_tokens=settings.tokens,
        train_batch_size_tokens=settings.batch_size,
        store_batch_size_prompts=LM_BATCH,
        n_batches_in_buffer=max(1, 8 * settings.batch_size // row),
        n_batches_for_norm_estimate=max(1, 8192 // settings.batch_size),
        lr=settings.lr,
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=steps // 5,
        dead_feature_window=max(1, steps // 10),
        feature_sampling_window=max(1, steps // 2),
        device="cpu",
        autocast=native_bf16(),
        seed=settings.seed,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(out),
        verbose=False,
    )
    torch.manual_seed(settings.seed)
    # sae-lens wants a dataset even when it reads cached activations; it only peeks at it
    dataset = Dataset.from_dict({"text": list(corpus.train)})
    with _sae_lens_quiet(), _restored_signal_handlers():
        LanguageModelSAETrainingRunner(cfg, override_dataset=dataset).run()


@torch.no_grad()
def evaluate_sae(path: Path | str, acts: torch.Tensor) -> dict[str, float | int]:
    """Explained variance, mean L0 and dead-feature share of the saved SAE at `path` on raw
    activations `acts` (tokens x d_in): also checks that it works in the model's own scale."""
    from sae_lens import SAE

    if acts.shape[0] == 0:
        raise ValueError("no tokens to evaluate the SAE on")
    sae = SAE.load_from_disk(str(path), device="cpu")
    codes = sae.encode(acts)
    residual = (acts - sae.decode(codes)).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()
    active = codes != 0
    return {
        "explained_variance": round(float(1 - residual / total), 4),
        "mean_l0": round(float(active.sum(-1).float().mean()), 2),
        "dead_feature_share": round(float((~active.any(0)).float().mean()), 4),
        "eval_tokens": int(acts.shape[0]),
    }


def publish(staging: Path, target: Path, marker: str = REPORT_FILE) -> None:
    """Move a finished folder into place; a killed run never leaves a half-written target.
    `marker` is the file a complete folder has (another process may have published first)."""
    if target.exists():
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:  # another process published first
        if not (target / marker).is_file():
            raise


# --- helpers ----------------------------------------------------------------------------------


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX). Then bf16 autocast makes
    the model forward about 1.7x and the SAE step about 1.75x faster, with the same held-out
    explained variance (measured on SmolLM2-135M); emulated bf16 would be slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


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
    """Silence what is expected here: the placeholder dataset (untokenised, overriding an empty
    `dataset_path`) and the repeats over the cached activations."""
    sae_lens_logger = logging.getLogger("sae_lens")
    level = sae_lens_logger.level
    sae_lens_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for message in (
                "Dataset is not tokenized",
                "The training dataset contains fewer",
                "All samples in the training dataset",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        sae_lens_logger.setLevel(level)
