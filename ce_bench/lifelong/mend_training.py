"""Training MEND's network (`ce-bench train-mend`), as MEND Sec. 3 and EasyEdit's trainer do.

Each step takes one training record (edit: prompt + target; equivalence: paraphrase + target;
locality: an unrelated question + its answer), with every model weight frozen:

1. the gradient factors of the edit's target NLL at W_down of the edited layers;
2. the network's updates of those weights, applied differentiably;
3. the loss cedit * NLL(target | paraphrase) on the edited model + cloc * KL(unedited || edited)
   over the locality tokens, back-propagated into the network and its per-layer steps.

Gradients accumulate over `accumulate` records, are clipped to `grad_clip`, and Adam steps
(`lr` for the network, `lr_lr` for the steps). Every `val_every` steps the edit success on
held-out records (token accuracy of the target after the paraphrase, on the edited model) is
measured; the best network is kept, and training stops `patience` steps after the last
improvement or at `max_steps`. Defaults: EasyEdit's LLaMA MEND training config (100,000 steps,
validation every 1,000, patience 30,000). On this project's 2-core CPU that budget is days; the
note in docs/lifelong.md gives the time per step and what a shorter budget reaches.

The network is cached under $CE_BENCH_HOME/mend/<model>/<hash of data and settings>/ with what
trained it (data digest, settings, steps, losses, time); the `mend` editor finds it there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.interventions.base import check_integer, check_number
from ce_bench.lifelong.editor import target_loss
from ce_bench.lifelong.mend import (
    MEND_LAYERS,
    MENDNet,
    edited_layers,
    gradient_factors,
    mend_updates,
    shape_for,
    weights_in_place,
)
from ce_bench.lifelong.records import EditRecord, load_stream
from ce_bench.lifelong.weight_editor import w_down
from ce_bench.runtime import ce_bench_home, model_cache_name
from ce_bench.scoring import answer_logits, frozen_parameters, golden_batch
from ce_bench.sites import out_in


@dataclass(frozen=True, kw_only=True)
class MENDTrainConfig:
    """What `train_mend` does; defaults are EasyEdit's LLaMA MEND training config."""

    train: str = "zsre_train"  # the ZsRE-format training records (a built-in set or a file)
    val_records: int = 50  # the last ones, held out for validation
    layers: int = MEND_LAYERS
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    lr: float = 1e-6  # Adam, the network
    lr_lr: float = 1e-4  # Adam, the per-layer steps
    cedit: float = 0.1
    cloc: float = 1.0
    accumulate: int = 10  # records per optimiser step
    grad_clip: float = 100.0
    max_steps: int = 100_000  # records seen
    val_every: int = 1000
    patience: int = 30_000
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("val_records", "layers", "rank", "n_hidden", "accumulate", "max_steps",
                     "val_every", "patience"):  # fmt: skip
            check_integer(name, getattr(self, name), 1)
        for name in ("edit_lr", "lr", "lr_lr", "cedit", "cloc", "grad_clip"):
            check_number(name, getattr(self, name))


def cache_dir(model_name: str, config: MENDTrainConfig, data_digest: str) -> Path:
    """Where a network trained with `config` on data `data_digest` is cached."""
    key = json.dumps({**asdict(config), "data": data_digest}, sort_keys=True)
    return ce_bench_home() / "mend" / model_name / hashlib.sha256(key.encode()).hexdigest()[:10]


def train_mend(
    model: nn.Module, tokenizer: Any, config: MENDTrainConfig, out: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train a network for `model` and save it into `out` (default: the cache); returns the
    directory and what its `mend.json` records."""
    stream = load_stream(config.train)
    records = list(stream.records)
    if any(r.rephrase is None for r in records):
        raise ValueError(f"{config.train}: MEND trains on paraphrases; these records have none")
    if len(records) <= config.val_records:
        raise ValueError(
            f"{config.train} holds {len(records)} records, not more than val_records="
            f"{config.val_records}"
        )
    train, held_out = records[: -config.val_records], records[-config.val_records :]
    out = out or cache_dir(model_cache_name(model), config, stream.digest)
    torch.manual_seed(config.seed)
    layers = edited_layers(model, config.layers)
    modules = [w_down(model, layer) for layer in layers]
    sizes = {"rank": config.rank, "n_hidden": config.n_hidden, "edit_lr": config.edit_lr}
    net = MENDNet(shape_for(model, config.layers, **sizes)).to(modules[0].weight.device)
    start = time.perf_counter()
    model.eval()
    with frozen_parameters(model):  # gradients reach the network only
        progress = _optimise(model, tokenizer, net, modules, layers, train, held_out, config)
        unedited = validate(model, tokenizer, None, modules, layers, held_out)
    description = {
        "model": model_cache_name(model),
        "layers": layers,
        "training": {
            "data": config.train,
            "data_digest": stream.digest,
            "records": len(train),
            "held_out": len(held_out),
            "settings": asdict(config),
            **progress,
            "unedited_val_acc": unedited,
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    net.cpu().save(out, description)
    return out, description


def _optimise(
    model: nn.Module,
    tokenizer: Any,
    net: MENDNet,
    modules: list[nn.Module],
    layers: list[int],
    train: list[EditRecord],
    held_out: list[EditRecord],
    config: MENDTrainConfig,
) -> dict[str, Any]:
    """The training loop; leaves the best validated network in `net` and returns the steps
    run, the best step, its held-out edit accuracy and the validation history."""
    optimiser = torch.optim.Adam(
        [
            {"params": [p for n, p in net.named_parameters() if n != "edit_lrs"], "lr": config.lr},
            {"params": [net.edit_lrs], "lr": config.lr_lr},
        ]
    )
    order = random.Random(config.seed)
    best, best_step, history, losses = -1.0, 0, [], []
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    bar = tqdm(range(1, config.max_steps + 1), desc="train MEND", unit="step")
    for step in bar:
        record = train[order.randrange(len(train))]
        losses.append(_step(model, tokenizer, net, modules, layers, record, config))
        if step % config.accumulate == 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimiser.step()
            optimiser.zero_grad()
        if step % config.val_every == 0 or step == config.max_steps:
            accuracy = validate(model, tokenizer, net, modules, layers, held_out)
            recent = losses[-config.val_every :]
            history.append(
                {"step": step, "val_edit_acc": accuracy, "train_loss": sum(recent) / len(recent)}
            )
            bar.set_postfix(val_acc=f"{accuracy:.3f}", loss=f"{history[-1]['train_loss']:.3g}")
            if accuracy > best:
                best, best_step = accuracy, step
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            elif step - best_step >= config.patience:
                break
    net.load_state_dict(best_state)
    return {"steps": step, "best_step": best_step, "val_edit_acc": best, "history": history}


def _step(
    model: nn.Module,
    tokenizer: Any,
    net: MENDNet,
    modules: list[nn.Module],
    layers: list[int],
    record: EditRecord,
    config: MENDTrainConfig,
) -> float:
    """One record's loss, back-propagated into the network (gradients accumulate)."""
    device = modules[0].weight.device
    edit = golden_batch(tokenizer, [(record.prompt, record.target)], device)
    factors = gradient_factors(model, edit, layers)
    for x, delta in factors:
        net.observe(torch.cat([x, delta], -1))
    locality = tokenizer(record.loc_prompt + " " + record.loc_answer, return_tensors="pt").to(
        device
    )
    with torch.no_grad():
        before = model(**locality).logits.float()
    updates = mend_updates(net, factors)
    weights = [
        (out_in(m, m.weight).float() - u).to(m.weight.dtype)
        for m, u in zip(modules, updates, strict=True)
    ]
    outer = golden_batch(tokenizer, [(record.rephrase or record.prompt, record.target)], device)
    with weights_in_place(modules, weights):
        edit_loss = target_loss(model, outer)[0]
        after = model(**locality).logits.float()
    kl = nn.functional.kl_div(
        after.log_softmax(-1), before.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    loss = config.cedit * edit_loss + config.cloc * kl.mean()
    (loss / config.accumulate).backward()
    return float(loss.detach())


def validate(
    model: nn.Module,
    tokenizer: Any,
    net: MENDNet | None,
    modules: list[nn.Module],
    layers: list[int],
    records: list[EditRecord],
) -> float:
    """Mean token accuracy of each record's target after its paraphrase, once the network has
    edited the model for that record alone (the unedited model's with `net=None`)."""
    device = modules[0].weight.device
    scores = []
    for record in records:
        outer = golden_batch(tokenizer, [(record.rephrase or record.prompt, record.target)], device)
        weights = [out_in(m, m.weight).detach() for m in modules]
        if net is not None:
            edit = golden_batch(tokenizer, [(record.prompt, record.target)], device)
            with torch.no_grad():
                updates = mend_updates(net, gradient_factors(model, edit, layers))
            weights = [(w.float() - u).to(w.dtype) for w, u in zip(weights, updates, strict=True)]
        with torch.no_grad(), weights_in_place(modules, weights):
            logits, labels, _ = answer_logits(model, outer)
        scores.append(float((logits.argmax(-1) == labels).float().mean()))
    return sum(scores) / len(scores)
