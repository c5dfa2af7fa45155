"""Speed overhead of ce-bench's `edited_hf` against plain lm-eval `hf`, measured in one run.

Not a test: a benchmark to run by hand on CPU with the embedded model (smollm2-135m):

    .venv/bin/python bench/overhead.py [--repeats N] [--threads T] [--quick]

Every configuration runs the same two workloads at batch size 8: loglikelihood (ARC-Easy items,
prompt "Question: {q}\\nAnswer:", one " {choice}" continuation per choice) and greedy generation
(paired-task prompts, max_gen_toks 16, until "\\n\\n"). Configurations:

- `hf`: lm-eval's HFLM, the reference;
- `edited_hf`: no intervention;
- `steer off`: a steer intervention attached but switched off (`with lm.switch.set(False):`);
- `steer`, `neuron_scale`, `directional_ablation`, `sae_clamp` (a random sae-lens SAE,
  d_sae 2304): one intervention each at layer 15;
- `steered`: lm-eval's own SteeredModel with the same vector, layer and strength as `steer`.

All models are built up front; after one warm-up pass, the repeats run round-robin over the
configurations (so machine drift hits all of them alike) and each workload keeps its minimum.
Ratios compare totals (min loglikelihood + min generation time). Targets:
steer, neuron_scale, directional_ablation <= 1.03 x hf; sae_clamp <= 1.15 x hf;
steer off <= 1.01 x hf; edited_hf steer <= 1.00 x steered.

Run it on an otherwise idle machine. `--threads 1` pins torch to one thread, which makes the
times far steadier on a small machine; by default torch keeps its own thread count.

The last line printed is machine-readable:
    steer_vs_hf=R sae_vs_hf=R off_vs_hf=R steer_vs_steered=R
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from lm_eval.models.huggingface import HFLM
from rich.console import Console
from rich.table import Table

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance, save_artifact
from ce_bench.embedded import embedded_model_dir
from ce_bench.locate.diffmean import DiffmeanConfig, locate_diffmean
from ce_bench.models.edited_hf import EditedHFLM
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.sites import Site

ROOT = Path(__file__).resolve().parent.parent
LAYER, STRENGTH, BATCH_SIZE = 15, 4.0, 8
D_SAE = 2304
GEN_KWARGS: dict[str, Any] = {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}
# (configuration, reference, limit): configuration total <= limit x reference total
TARGETS = [
    ("steer", "hf", 1.03),
    ("neuron_scale", "hf", 1.03),
    ("directional_ablation", "hf", 1.03),
    ("sae_clamp", "hf", 1.15),
    ("steer off", "hf", 1.01),
    ("steer", "steered", 1.00),
]


@dataclass
class Config:
    """One model under test, its requests, and the times measured for it."""

    name: str
    lm: HFLM
    ll_requests: list[Instance]
    gen_requests: list[Instance]
    switched_off: bool = False
    ll_times: list[float] = field(default_factory=list)
    gen_times: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return min(self.ll_times) + min(self.gen_times)

    def state(self) -> AbstractContextManager[None]:
        """The context the workloads run in: the intervention switched off, or as built."""
        return self.lm.switch.set(False) if self.switched_off else nullcontext()


# ---------------------------------------------------------------------------------- workloads
def read_jsonl(path: Path, count: int) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def loglikelihood_requests(items: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs of the first `items` ARC-Easy questions."""
    docs = read_jsonl(ROOT / "tasks/general/data/arc_easy.jsonl", items)
    return [
        (f"Question: {doc['question']}\nAnswer:", f" {choice}")
        for doc in docs
        for choice in doc["choices"]["text"]
    ]


def generation_prompts(count: int) -> list[str]:
    return [doc["prompt"] for doc in read_jsonl(ROOT / "tasks/paired/data/prompts.jsonl", count)]


def as_instances(request_type: str, arguments: list[tuple[Any, ...]]) -> list[Instance]:
    return [Instance(request_type, {}, args, idx) for idx, args in enumerate(arguments)]


# ---------------------------------------------------------------------------------- interventions
def write_artifact(
    kind: str,
    site: Site,
    params: dict[str, Any],
    tensors: dict[str, Any],
    identity: ModelIdentity,
    directory: Path,
) -> str:
    artifact = Artifact(kind, site, params, tensors, identity, Provenance(method="bench"))
    return str(save_artifact(artifact, directory / kind))


def write_sae(directory: Path) -> str:
    """A random sae-lens SAE (fixed seed) reading the residual stream after layer LAYER."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    metadata = SAEMetadata(hook_name=f"model.layers.{LAYER}")
    sae = StandardSAE(StandardSAEConfig(d_in=576, d_sae=D_SAE, metadata=metadata))
    sae.save_model(directory / "sae")
    return str(directory / "sae")


def write_steer_file(vector: torch.Tensor, directory: Path) -> str:
    """lm-eval's steer config (.pt); hookpoints are named from `model.base_model`."""
    config = {
        f"layers.{LAYER}": {
            "steering_vector": vector,
            "steering_coefficient": STRENGTH,
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    }
    path = directory / "steer.pt"
    torch.save(config, path)
    return str(path)


# ---------------------------------------------------------------------------------- models
def build_configs(items: int, prompts: int, workdir: Path) -> list[Config]:
    """Every model, built once, all with the same requests."""
    ll = as_instances("loglikelihood", loglikelihood_requests(items))
    gen_args = [(prompt, dict(GEN_KWARGS)) for prompt in generation_prompts(prompts)]
    gen = as_instances("generate_until", gen_args)

    model_dir = str(embedded_model_dir())
    hf = HFLM(pretrained=model_dir, device="cpu", batch_size=BATCH_SIZE)
    steer = locate_diffmean(
        hf.model,
        hf.tokenizer,
        (ROOT / "examples/happy.txt").read_text().splitlines(),
        (ROOT / "examples/neutral.txt").read_text().splitlines(),
        DiffmeanConfig(layer=LAYER, strength=STRENGTH),
        model_name=EMBEDDED_NAME,
    )
    vector = steer.tensors["vector"]
    identity = ModelIdentity.of(hf.model, EMBEDDED_NAME)
    resid = Site("resid_post", LAYER)
    neurons = {"neurons": torch.arange(0, 1536, 7, dtype=torch.int64)}
    sae_params = {"feature": 3, "strength": 10.0, "mode": "delta", "sae_path": write_sae(workdir)}
    artifacts = {
        "steer": str(save_artifact(steer, workdir / "steer")),
        "neuron_scale": write_artifact(
            "neuron_scale", Site("mlp_act", LAYER), {"strength": 0.0}, neurons, identity, workdir
        ),
        "directional_ablation": write_artifact(
            "directional_ablation", resid, {}, {"direction": vector}, identity, workdir
        ),
        "sae_clamp": write_artifact("sae_clamp", resid, sae_params, {}, identity, workdir),
    }

    def edited(intervention: str | None = None) -> EditedHFLM:
        return EditedHFLM(intervention=intervention, device="cpu", batch_size=BATCH_SIZE)

    steered = SteeredModel(
        pretrained=model_dir,
        steer_path=write_steer_file(vector, workdir),
        device="cpu",
        batch_size=BATCH_SIZE,
    )
    return [
        Config("hf", hf, ll, gen),
        Config("edited_hf", edited(), ll, gen),
        Config("steer off", edited(artifacts["steer"]), ll, gen, switched_off=True),
        *(Config(name, edited(path), ll, gen) for name, path in artifacts.items()),
        Config("steered", steered, ll, gen),
    ]


# ---------------------------------------------------------------------------------- timing
def run_ll(config: Config) -> list[tuple[float, bool]]:
    with config.state():
        return config.lm.loglikelihood(config.ll_requests, disable_tqdm=True)


def run_gen(config: Config) -> list[str]:
    with config.state():
        return config.lm.generate_until(config.gen_requests, disable_tqdm=True)


def timed(fn: Callable[[Config], object], config: Config) -> float:
    start = time.perf_counter()
    fn(config)
    return time.perf_counter() - start


def warm_up(configs: list[Config]) -> dict[str, int]:
    """One pass of each workload per model; checks OFF equals hf; returns generated tokens."""
    scores = {c.name: run_ll(c) for c in configs}
    if scores["steer off"] != scores["hf"]:
        raise RuntimeError("switched-off edited_hf scores differ from hf: the switch is not off")
    if scores["steer"] == scores["hf"]:
        raise RuntimeError("steered edited_hf scores equal hf: the intervention is not applied")
    tokenizer = configs[0].lm.tokenizer
    return {c.name: sum(len(tokenizer.encode(text)) for text in run_gen(c)) for c in configs}


def measure(configs: list[Config], repeats: int) -> None:
    """Round-robin over configurations, starting one further along at each repeat."""
    for repeat in range(repeats):
        shift = repeat % len(configs)
        for config in configs[shift:] + configs[:shift]:
            config.ll_times.append(timed(run_ll, config))
            config.gen_times.append(timed(run_gen, config))


# ---------------------------------------------------------------------------------- report
def print_report(configs: list[Config], generated: dict[str, int], repeats: int) -> None:
    totals = {c.name: c.total for c in configs}
    table = Table(title=f"edited_hf overhead, CPU, batch {BATCH_SIZE}, min of {repeats}")
    for column in ("configuration", "ll (s)", "gen (s)", "total (s)", "x hf", "gen tokens"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for c in configs:
        table.add_row(
            c.name,
            f"{min(c.ll_times):.3f}",
            f"{min(c.gen_times):.3f}",
            f"{c.total:.3f}",
            f"{c.total / totals['hf']:.3f}",
            str(generated[c.name]),
        )
    targets = Table(title="targets (ratios of totals)")
    for column in ("configuration", "vs", "ratio", "target", "met"):
        targets.add_column(column)
    for name, reference, limit in TARGETS:
        ratio = totals[name] / totals[reference]
        targets.add_row(name, reference, f"{ratio:.3f}", f"<= {limit:.2f}", _yes(ratio <= limit))
    console = Console()
    console.print(table)
    console.print(targets)
    print(
        f"steer_vs_hf={totals['steer'] / totals['hf']:.3f}"
        f" sae_vs_hf={totals['sae_clamp'] / totals['hf']:.3f}"
        f" off_vs_hf={totals['steer off'] / totals['hf']:.3f}"
        f" steer_vs_steered={totals['steer'] / totals['steered']:.3f}"
    )


def _yes(met: bool) -> str:
    return "[green]yes[/green]" if met else "[red]no[/red]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per workload")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="fewer items, for a smoke test")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    items, prompts = (8, 4) if args.quick else (40, 8)
    with tempfile.TemporaryDirectory(prefix="ce-bench-overhead-") as workdir:
        configs = build_configs(items, prompts, Path(workdir))
        generated = warm_up(configs)
        measure(configs, max(1, args.repeats))
    print_report(configs, generated, max(1, args.repeats))


if __name__ == "__main__":
    main()
