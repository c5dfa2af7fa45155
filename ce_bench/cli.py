"""The `ce-bench` command. Thin: it parses arguments and calls library functions."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ce_bench.board.commands import leaderboard_cmd, regress_cmd, sweep_cmd

app = typer.Typer(help="ce-bench: benchmark concept and knowledge editing inside lm-eval.")
locate_app = typer.Typer(help="Locate an intervention and write it as an artifact directory.")
app.add_typer(locate_app, name="locate")
analyze_app = typer.Typer(help="Analyses of located edits (seed 000 sections 4.4 and 4.5).")
app.add_typer(analyze_app, name="analyze")
console = Console()
app.command("leaderboard")(leaderboard_cmd)
app.command("regress")(regress_cmd)
app.command("sweep")(sweep_cmd)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval(ctx: typer.Context) -> None:  # noqa: A001 (the subcommand is called eval)
    """Run lm-eval's CLI with ce-bench registered; takes exactly lm_eval's arguments."""
    from lm_eval.__main__ import cli_evaluate

    from ce_bench import register

    register()
    sys.argv = ["lm_eval", *ctx.args]
    cli_evaluate()


@locate_app.command("diffmean")
def locate_diffmean_cmd(
    positive: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    negative: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    layer: int = typer.Option(..., help="Layer L (0-based): the vector lives at resid_post of L."),
    out: Path = typer.Option(..., help="Artifact directory to write."),
    model: str = typer.Option("smollm2-135m", help="HF id or path; default: embedded model."),
    aggregate: str = typer.Option("last", help="last token or mean over tokens."),
    strength: float = typer.Option(1.0, help="Default k of h + k*v (model_args may override)."),
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
) -> None:
    """Difference of mean residual activations, positive minus negative (seed 000 Eq. 6)."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.diffmean import locate_diffmean
    from ce_bench.models.embedded import load_model

    lm, tokenizer = load_model(model, device)
    artifact = locate_diffmean(
        lm, tokenizer, _lines(positive), _lines(negative), layer, model, aggregate, strength
    )
    save_artifact(artifact, out)
    norm = float(artifact.tensors["vector"].norm())
    console.print(f"wrote {out} (steer at {artifact.site}, |v| = {norm:.3f})")


# Options every emotion locate command shares (seed 000: one emotion, one layer, the locate split).
EMOTION = typer.Option(
    ..., help="Target emotion: happiness, sadness, anger, fear, surprise, disgust."
)
LAYER = typer.Option(..., help="Layer L (0-based).")
OUT = typer.Option(..., help="Artifact directory to write.")
MODEL = typer.Option("smollm2-135m", help="HF id or path; default: embedded model.")
SCENARIOS = typer.Option(None, help="RepE scenario dir or URL; default: the shipped set.")
LIMIT = typer.Option(None, help="Locate scenarios to use (each under every template); default all.")
DEVICE = typer.Option(None, help="cpu / cuda; default: cuda if available.")


def _locate(
    method: str,
    emotion: str,
    layer: int,
    out: Path,
    model: str,
    scenarios: str | None,
    limit: int | None,
    device: str | None,
    options: dict[str, Any],
    sae: Any = None,
) -> Any:
    """Run one emotion locate method and write its artifact; returns the artifact."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.emotions import EMOTIONS
    from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
    from ce_bench.models.embedded import load_model

    if emotion not in EMOTIONS:
        raise typer.BadParameter(
            f"{emotion!r} is not one of {', '.join(EMOTIONS)}", param_hint="--emotion"
        )
    data = EmotionData.load(scenarios)
    lm, tokenizer = load_model(model, device)
    given = _given(**options)
    job = EmotionJob(lm, tokenizer, model, data, emotion, layer, limit, sae, given)
    artifact = locate_emotion(method, job)
    save_artifact(artifact, out)
    return artifact


@locate_app.command("steering")
def locate_steering_cmd(
    emotion: str = EMOTION,
    layer: int = LAYER,
    out: Path = OUT,
    model: str = MODEL,
    scenarios: str | None = SCENARIOS,
    limit: int | None = LIMIT,
    device: str | None = DEVICE,
) -> None:
    """Mean residual of the emotion's prompts minus the other emotions' (seed 000 Eq. 6)."""
    artifact = _locate("steering", emotion, layer, out, model, scenarios, limit, device, {})
    unit = artifact.provenance.report["strength_unit"]
    console.print(f"wrote {out} (steer at {artifact.site}; k = {unit:.2f} matches |h|)")


@locate_app.command("knowledge-neurons")
def locate_knowledge_neurons_cmd(
    emotion: str = EMOTION,
    layer: int = LAYER,
    out: Path = OUT,
    model: str = MODEL,
    scenarios: str | None = SCENARIOS,
    limit: int | None = LIMIT,
    device: str | None = DEVICE,
    steps: int | None = typer.Option(None, help="Riemann steps m of the IG integral; default 20."),
    threshold: float | None = typer.Option(
        None, help="Keep neurons above this x each prompt's max attribution; default 0.1."
    ),
    min_share: float | None = typer.Option(
        None, help="Co-occurrence q: keep neurons passing in more than this share; default 0.2."
    ),
    max_neurons: int | None = typer.Option(
        None, help="Cap on kept neurons; default: A.8's 450 per 14336 of the layer's width."
    ),
    strength: float | None = typer.Option(
        None, help="beta of Eq. 3 (>1 amplifies, 0 masks); default 2.0."
    ),
) -> None:
    """Knowledge neurons of an emotion's golden answers by integrated gradients (Eq. 1-3)."""
    options = dict(
        steps=steps,
        threshold=threshold,
        min_share=min_share,
        max_neurons=max_neurons,
        strength=strength,
    )
    artifact = _locate(
        "knowledge-neurons", emotion, layer, out, model, scenarios, limit, device, options
    )
    report = artifact.provenance.report
    console.print(
        f"wrote {out} ({len(report['neurons'])} of {report['candidates']} candidate neurons at"
        f" {artifact.site}, from {report['prompts']} prompts, beta = {artifact.params['strength']})"
    )


@locate_app.command("sae-features")
def locate_sae_features_cmd(
    emotion: str = EMOTION,
    layer: int = LAYER,
    out: Path = OUT,
    model: str = MODEL,
    scenarios: str | None = SCENARIOS,
    limit: int | None = LIMIT,
    device: str | None = DEVICE,
    sae_path: str = typer.Option("", help="Local sae-lens SAE directory."),
    sae_release: str = typer.Option("", help="sae-lens release (hub), with --sae-id."),
    sae_id: str = typer.Option("", help="SAE id within the release."),
    top: int | None = typer.Option(None, help="Candidates the Reinforcer interprets; default 10."),
) -> None:
    """SAE feature by attribution (Eq. 9-10) and the Reinforcer (A.1); no SAE given on the
    embedded model: the project's own SAE for the layer (ce-bench train-sae)."""
    from ce_bench.locate.sae_features import FeatureNotFound, SAESource

    if not (sae_path or sae_release):
        if model != "smollm2-135m":
            raise typer.BadParameter("give --sae-path or --sae-release/--sae-id for this model")
        from ce_bench.sae_training import ensure_sae

        sae_path = str(ensure_sae(layer, model=model))
    source = SAESource(sae_path, sae_release, sae_id)
    try:
        artifact = _locate(
            "sae-features",
            emotion,
            layer,
            out,
            model,
            scenarios,
            limit,
            device,
            {"top": top},
            source,
        )
    except FeatureNotFound as err:
        console.print(_candidates_table(err.candidates, emotion))
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from err
    report = artifact.provenance.report
    console.print(_candidates_table(report["candidates"], emotion))
    console.print(
        f"wrote {out}: feature {artifact.params['feature']} (rank {report['chosen_rank']}),"
        f" C = {artifact.params['strength']:.2f}; target in a prompt's top 10:"
        f" {100 * report['top10_hit_rate']:.1f}% of locate prompts"
    )


def _candidates_table(candidates: list[Any], emotion: str) -> Table:
    table = Table(title=f"Reinforcer: top features for {emotion}")
    for column in ("rank", "feature", "attribution", "interpretation", f"is {emotion}"):
        table.add_column(column)
    for c in candidates:
        c = c if isinstance(c, dict) else asdict(c)
        table.add_row(
            str(c["rank"]),
            str(c["feature"]),
            f"{c['attribution']:.4g}",
            " ".join(c["interpretation"]) or "(no repeat)",
            "yes" if c["matches"] else "",
        )
    return table


@locate_app.command("sft")
def locate_sft_cmd(
    emotion: str = EMOTION,
    layer: int = LAYER,
    out: Path = OUT,
    model: str = MODEL,
    scenarios: str | None = SCENARIOS,
    limit: int | None = LIMIT,
    device: str | None = DEVICE,
    lr: float | None = typer.Option(None, help="Adam learning rate; default 1e-4."),
    epochs: int | None = typer.Option(None, help="Passes over the locate prompts; default 2."),
) -> None:
    """Fine-tune only W_down of the layer on prompt + golden answer (seed 000 section 2)."""
    options = {"lr": lr, "epochs": epochs}
    artifact = _locate("sft", emotion, layer, out, model, scenarios, limit, device, options)
    report = artifact.provenance.report
    console.print(
        f"wrote {out} (weight_delta of W_down at layer {layer}; answer loss"
        f" {report['first_loss']:.3f} -> {report['last_loss']:.3f})"
    )


def _class_dataset(name: str, targets: list[str]) -> Any:
    """The erasure dataset `name`, with every target checked to be one of its classes."""
    from ce_bench.classification import dataset

    try:
        spec = dataset(name)
        for target in targets:
            spec.class_index(target)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    return spec


@locate_app.command("ranges")
def locate_ranges_cmd(
    dataset: str = typer.Option(..., help="agnews, emotion, dbpedia14, imdb or sst2."),
    target: str = typer.Option(..., help="Class to erase, by name or label word (Sports)."),
    out: Path = OUT,
    layer: int | None = typer.Option(None, help="Layer L (0-based); default the penultimate."),
    model: str = MODEL,
    device: str | None = DEVICE,
    ranking: str = typer.Option("max", help="Saliency: max (the paper's), probeless or probe."),
    top: float | None = typer.Option(None, help="Kept fraction; default 0.3 (0.2 with an SAE)."),
    tau: float = typer.Option(2.5, help="Range [mu - tau sigma, mu + tau sigma] (5.1)."),
    phi: str = typer.Option("zero", help="zero, dampen, mean, adaptive or steer (App. G, M.2)."),
    gate: str = typer.Option("range", help="range (NeuronLens) or always (neuron masking)."),
    data: str = typer.Option("shipped", help="shipped (offline set) or hub."),
    per_class: int | None = typer.Option(None, help="Training examples per class; default all."),
    sae_path: str = typer.Option("", help="Mask ranges of this SAE's latents (App. N)."),
    sae_release: str = typer.Option("", help="sae-lens release (hub), with --sae-id."),
    sae_id: str = typer.Option("", help="SAE id within the release."),
) -> None:
    """Activation ranges of one class for erasure (seed 001 5.1, Algorithm 1)."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.ranges import locate_ranges, penultimate_layer
    from ce_bench.locate.sae_features import SAESource
    from ce_bench.models.embedded import load_model

    spec = _class_dataset(dataset, [target])
    lm, tokenizer = load_model(model, device)
    layer = penultimate_layer(lm) if layer is None else layer
    sae = SAESource(sae_path, sae_release, sae_id) if (sae_path or sae_release) else None
    artifact = locate_ranges(
        lm, tokenizer, spec, target, layer, model, ranking, top, tau, phi, gate, data, per_class,
        sae=sae,
    )  # fmt: skip
    save_artifact(artifact, out)
    report = artifact.provenance.report
    console.print(
        f"wrote {out}: {report['kept']} {'latents' if sae else 'neurons'} of {report['target']}"
        f" ({report['ranking']} ranking) at {artifact.site}; tau {tau}, phi {phi}, gate {gate}"
    )


@locate_app.command("class-steering")
def locate_class_steering_cmd(
    dataset: str = typer.Option(..., help="agnews, emotion, dbpedia14, imdb or sst2."),
    target: str = typer.Option(..., help="Class to remove, by name or label word."),
    out: Path = OUT,
    layer: int | None = typer.Option(None, help="Layer L (0-based); default the middle one (M)."),
    kind: str = typer.Option("steer", help="steer (h + a r) or directional_ablation."),
    strength: float = typer.Option(-2.0, help="a of h + a r (seed 001 M: -2)."),
    model: str = MODEL,
    device: str | None = DEVICE,
    data: str = typer.Option("shipped", help="shipped (offline set) or hub."),
    per_class: int | None = typer.Option(None, help="Training examples per class; default all."),
) -> None:
    """Seed 001 Appendix M baselines: r = class mean - other classes' mean at the label token."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.ranges import locate_class_direction, middle_layer
    from ce_bench.models.embedded import load_model

    spec = _class_dataset(dataset, [target])
    lm, tokenizer = load_model(model, device)
    layer = middle_layer(lm) if layer is None else layer
    artifact = locate_class_direction(
        lm, tokenizer, spec, target, layer, model, kind, strength, data, per_class
    )
    save_artifact(artifact, out)
    console.print(f"wrote {out}: {artifact.kind} of {target} at {artifact.site}")


@app.command("erasure-report")
def erasure_report_cmd(
    dataset: str = typer.Option("agnews", help="agnews, emotion, dbpedia14, imdb or sst2."),
    target: list[str] | None = typer.Option(None, help="Class to erase (repeatable); default all."),
    layer: int | None = typer.Option(None, help="Layer L (0-based); default the penultimate."),
    model: str = MODEL,
    phi: str = typer.Option("zero", help="zero, dampen, mean, adaptive or steer."),
    ranking: str = typer.Option("max", help="Saliency: max, probeless or probe."),
    per_class: int | None = typer.Option(None, help="Training examples per class; default all."),
    limit: int | None = typer.Option(None, help="Erasure examples per run; default all."),
    side_limit: int | None = typer.Option(None, help="PPL documents / MMLU items; default all."),
    baselines: bool = typer.Option(False, help="Also App. M steering and directional ablation."),
    data: str = typer.Option("shipped", help="shipped (offline sets) or hub."),
    out: Path = typer.Option(Path("results/erasure"), help="Where table.md and results.json go."),
) -> None:
    """Seed 001 Table 3/4: neuron masking vs activation range masking for each class, with
    Acc/Conf/CAcc/CConf and the PPL and MMLU side effects, base and edited from one run each."""
    from ce_bench.erasure_report import ErasureConfig, run_erasure_report

    _class_dataset(dataset, target or [])
    config = ErasureConfig(
        model=model, dataset=dataset, layer=layer, targets=tuple(target or ()), phi=phi,
        ranking=ranking, per_class=per_class, limit=limit, side_limit=side_limit, data=data,
        out=out, baselines=baselines,
    )  # fmt: skip
    run_erasure_report(config, console)
    console.print(f"tables in {out}/")


@app.command("lifelong-report")
def lifelong_report_cmd(
    edits: str = typer.Option("zsre", help="zsre (Table 1) or selfcheckgpt (Table 2)."),
    editor: list[str] | None = typer.Option(
        None, help="NAME[:key=value,...], repeatable; default ft grace microedit:alpha=auto wise"
    ),
    num_edits: list[int] | None = typer.Option(None, help="T, repeatable; default 1, 10, 100."),
    model: str = MODEL,
    out: Path | None = typer.Option(None, help="Where table.md and results.json go."),
) -> None:
    """Seed 003 Tables 1-2: each editor after T sequential edits (Rel/Gen/Loc/Avg or PPL/Loc);
    resumes from the results.json of an interrupted run."""
    from ce_bench.lifelong.report import LifelongReportConfig, run_lifelong_report

    defaults = LifelongReportConfig()
    config = LifelongReportConfig(
        model=model,
        edits=edits,
        editors=tuple(editor or defaults.editors),
        num_edits=tuple(num_edits or defaults.num_edits),
        out=out or Path("results/lifelong") / edits,
    )
    run_lifelong_report(config, console)
    console.print(f"tables in {config.out}/")


@analyze_app.command("generalization")
def analyze_generalization_cmd(
    emotion: str = typer.Option(..., help="Emotion whose word lists are scored (Table 3)."),
    artifact: list[str] | None = typer.Option(None, help="NAME=DIR, repeatable: one column each."),
    prompt: list[str] | None = typer.Option(
        None, help="Prompt, repeatable (averaged); default: seed 000's breakfast prompt."
    ),
    steps: int = typer.Option(20, help="Greedy steps per prompt."),
    model: str = typer.Option("smollm2-135m", help="HF id or path; default: embedded model."),
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
    out: Path | None = typer.Option(
        None, help="Also write the table: *.json as JSON, else Markdown."
    ),
) -> None:
    """Mean probability of concept, synonym, antonym, related, unrelated words (Table 4)."""
    from ce_bench.analysis import generalization_markdown, generalization_table
    from ce_bench.analysis import output_generalization as analyse
    from ce_bench.analysis.generalization import PAPER_PROMPT
    from ce_bench.artifacts import load_artifact
    from ce_bench.models.embedded import load_model

    artifacts = {name: load_artifact(path) for name, path in _named_dirs(artifact or [])}
    lm, tokenizer = load_model(model, device)
    report = analyse(lm, tokenizer, emotion, artifacts, prompt or (PAPER_PROMPT,), steps)
    console.print(generalization_table(report))
    _write_report(out, asdict(report), generalization_markdown(report))


@analyze_app.command("overlap")
def analyze_overlap_cmd(
    emotion: str = typer.Option(..., help="The artifacts' emotion; its prompts score SAE and SV."),
    ne: Path | None = typer.Option(None, help="neuron_scale artifact directory (NE)."),
    sae: Path | None = typer.Option(None, help="sae_clamp artifact directory (SAE)."),
    sv: Path | None = typer.Option(None, help="steer artifact directory (SV)."),
    sft: Path | None = typer.Option(None, help="weight_delta artifact directory (SFT)."),
    top_j: int | None = typer.Option(None, help="J when --ne is missing; otherwise J = |NE|."),
    prompts: int = typer.Option(20, help="Locate-split prompts SAE and SV are averaged over."),
    scenarios: str | None = typer.Option(None, help="RepE scenario dir or URL; default: shipped."),
    model: str = typer.Option("smollm2-135m", help="HF id or path; default: embedded model."),
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
    out: Path | None = typer.Option(
        None, help="Also write the table: *.json as JSON, else Markdown."
    ),
) -> None:
    """Overlap (%) of the neurons NE, SAE, SV and SFT imply at one layer (Table 5)."""
    from ce_bench.analysis import neuron_overlap, overlap_markdown, overlap_table
    from ce_bench.artifacts import load_artifact
    from ce_bench.locate.emotion import EmotionData
    from ce_bench.models.embedded import load_model

    given = {"ne": ne, "sae": sae, "sv": sv, "sft": sft}
    artifacts = {key: load_artifact(path) for key, path in given.items() if path is not None}
    texts = [p.text for p in EmotionData.load(scenarios).prompts(emotion, prompts)][:prompts]
    lm, tokenizer = load_model(model, device)
    report = neuron_overlap(lm, tokenizer, texts, top_j=top_j, emotion=emotion, **artifacts)
    console.print(overlap_table(report))
    _write_report(out, asdict(report), overlap_markdown(report))


INJECTED = typer.Option(..., help="Folder of a model that memorised the facts (inject-facts).")
FACTS = typer.Option(None, "--fact", help="Id of a fact to erase (repeatable); default all.")
FACTS_FILE = typer.Option(None, help="Fact file of the shipped schema; default the shipped set.")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (None means: the library's default)."""
    return {name: value for name, value in options.items() if value is not None}


def _privacy_inputs(model: str, facts: list[str] | None, facts_file: Path | None, device: Any):  # type: ignore[no-untyped-def]
    """(model, tokenizer, facts to erase), every input checked before the model loads."""
    from ce_bench.models.embedded import load_model
    from ce_bench.private_facts import load_fact_set

    if not Path(model).is_dir():
        raise typer.BadParameter(f"{model}: model folder not found", param_hint="--model")
    try:
        chosen = load_fact_set(facts_file).select(facts)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    return (*load_model(model, device), chosen)


@locate_app.command("featureedit")
def locate_featureedit_cmd(
    model: str = INJECTED,
    layer: int = typer.Option(..., help="Layer L: the SAE reads resid_post of L; W_down of L."),
    out: Path = OUT,
    fact: list[str] | None = FACTS,
    facts_file: Path | None = FACTS_FILE,
    tau_2: float | None = typer.Option(
        None, help="Zero the W_down rows i where |h_i|/||h|| > tau_2; default 0.1."
    ),
    sae_path: str = typer.Option(
        "",
        help="Local sae-lens SAE directory; default: the embedded"
        " model's own SAE for the layer (ce-bench train-sae).",
    ),
    sae_release: str = typer.Option("", help="sae-lens release (hub), with --sae-id."),
    sae_id: str = typer.Option("", help="SAE id within the release."),
    device: str | None = DEVICE,
) -> None:
    """FeatureEdit (seed 002): per fact the SAE feature with the largest Delta-Prob, its decoder
    direction's large coordinates zeroed in W_down."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.privacy import locate_feature_edit
    from ce_bench.locate.sae_features import SAESource
    from ce_bench.sae_training.train import free_cores, torch_threads

    options = _given(tau_2=tau_2)
    lm, tokenizer, facts = _privacy_inputs(model, fact, facts_file, device)
    if not (sae_path or sae_release):
        from ce_bench.sae_training import ensure_sae

        sae_path = str(ensure_sae(layer))  # SAEs of the base model, as seed 002 uses Gemma Scope's
    source = SAESource(sae_path, sae_release, sae_id)
    with torch_threads(free_cores()):
        artifact = locate_feature_edit(lm, tokenizer, facts, source, model, **options)
    save_artifact(artifact, out)
    report = artifact.provenance.report
    drops = [c["delta_prob"] for c in report["choices"]]
    console.print(
        f"wrote {out}: {len(facts)} facts, {report['distinct_features']} distinct features"
        f" (mean Delta-Prob {sum(drops) / len(drops):.3f}), {report['marked_rows']} W_down rows"
        f" zeroed at layer {layer} (tau_2 = {artifact.params['tau_2']})"
    )


@locate_app.command("fact-neurons")
def locate_fact_neurons_cmd(
    model: str = INJECTED,
    layer: int = LAYER,
    out: Path = OUT,
    fact: list[str] | None = FACTS,
    facts_file: Path | None = FACTS_FILE,
    threshold: float | None = typer.Option(
        None, help="Keep neurons above this x the fact's max attribution; default 0.2."
    ),
    max_neurons: int | None = typer.Option(None, help="Neurons per fact at most; default 10."),
    steps: int | None = typer.Option(None, help="Riemann steps m of the IG integral; default 20."),
    device: str | None = DEVICE,
) -> None:
    """Knowledge neurons of each fact by integrated gradients, their W_down columns zeroed (the
    neuron baseline of seed 002)."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.privacy import locate_fact_neurons
    from ce_bench.sae_training.train import free_cores, torch_threads

    options = _given(steps=steps, threshold=threshold, max_neurons=max_neurons)
    lm, tokenizer, facts = _privacy_inputs(model, fact, facts_file, device)
    with torch_threads(free_cores()):
        artifact = locate_fact_neurons(lm, tokenizer, facts, layer, model, **options)
    save_artifact(artifact, out)
    console.print(
        f"wrote {out}: {len(artifact.tensors['neurons'])} neurons of {len(facts)} facts zeroed"
        f" at {artifact.site}"
    )


@app.command("inject-facts")
def inject_facts_cmd(
    model: str = MODEL,
    out: Path | None = typer.Option(None, help="Model folder; default the ce-bench cache."),
    facts_file: Path | None = FACTS_FILE,
    lr: float | None = typer.Option(None, help="Adam learning rate; default 3e-3."),
    max_steps: int | None = typer.Option(None, help="Optimizer steps at most; default 150."),
    batch_size: int | None = typer.Option(None, help="Rows per step; default 32."),
    first_layer: int | None = typer.Option(
        None, help="Train the MLPs of first..last layer; default two thirds of the depth (20)."
    ),
    last_layer: int | None = typer.Option(None, help="Default: --first-layer (one layer)."),
    seed: int | None = typer.Option(None, help="Seed of the batch order; default 0."),
    device: str | None = DEVICE,
    force: bool = typer.Option(False, "--force", help="Train again even if cached."),
) -> None:
    """Fine-tune a model until it has memorised the private facts (seed 002's injection)."""
    from ce_bench.inject import REPORT_FILE, InjectSettings, inject_facts
    from ce_bench.private_facts import load_fact_set

    given = _given(lr=lr, max_steps=max_steps, batch_size=batch_size, first_layer=first_layer,
                   last_layer=last_layer, seed=seed)  # fmt: skip
    try:
        settings = InjectSettings(**given)
        data = load_fact_set(facts_file)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    try:
        path = inject_facts(model, out, settings, data, device, force)
    except (FileExistsError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    report = json.loads((path / REPORT_FILE).read_text())
    table = Table(title=f"facts injected into {model}", show_header=False)
    table.add_row("steps (epochs)", f"{report['steps']} ({report['epochs']})")
    for name, rate in report["memorised"].items():
        table.add_row(f"memorised: {name}", "-" if rate is None else f"{100 * rate:.1f}%")
    table.add_row("trained layers (MLPs)", f"{report['trained_layers'][0]}-"
                  f"{report['trained_layers'][-1]}")  # fmt: skip
    table.add_row("wall seconds", str(report["wall_seconds"]))
    console.print(table)
    console.print(f"model: {path}")


@app.command("train-sae")
def train_sae_cmd(
    layer: int = typer.Option(..., help="Layer L (0-based): the SAE reads resid_post of L."),
    model: str = MODEL,
    out: Path | None = typer.Option(None, help="SAE directory; default: the ce-bench cache."),
    tokens: int | None = typer.Option(None, help="Training tokens; default 300000."),
    d_sae: int | None = typer.Option(None, help="Dictionary size; default 4608."),
    k: int | None = typer.Option(None, help="Active features per token (Top-k); default 32."),
    seed: int | None = typer.Option(None, help="Seed of sampling, init and order; default 0."),
    force: bool = typer.Option(False, "--force", help="Retrain even if the SAE exists."),
) -> None:
    """Train a Top-k SAE on one layer's residual stream, offline (cached per settings)."""
    from ce_bench.sae_training import load_report, train_sae

    given = {"tokens": tokens, "d_sae": d_sae, "k": k, "seed": seed}
    settings = _given(**given)
    path = train_sae(layer, model, out, force=force, **settings)
    report = load_report(path)
    table = Table(title=f"SAE at {report['hook_name']} of {report['model']}", show_header=False)
    table.add_row("explained variance (held out)", f"{report['explained_variance']:.3f}")
    table.add_row("mean L0", f"{report['mean_l0']:.1f}")
    table.add_row("dead features (held out)", f"{100 * report['dead_feature_share']:.1f}%")
    table.add_row("evaluation tokens", str(report["eval_tokens"]))
    table.add_row("tokens trained", str(report["tokens_trained"]))
    table.add_row("train / total seconds", f"{report['train_seconds']} / {report['wall_seconds']}")
    table.add_row("settings", json.dumps(report["settings"]))
    console.print(table)
    console.print(f"SAE: {path}")


@app.command()
def show(directory: Path) -> None:
    """Print an artifact's manifest and tensor shapes."""
    from ce_bench.artifacts import load_artifact

    artifact = load_artifact(directory)
    table = Table(title=str(directory), show_header=False)
    table.add_row("kind", artifact.kind)
    table.add_row("site", str(artifact.site))
    table.add_row("params", json.dumps(artifact.params))
    for name, tensor in artifact.tensors.items():
        table.add_row(f"tensor {name}", f"{tuple(tensor.shape)} {tensor.dtype}")
    table.add_row(
        "located on",
        f"{artifact.model.name} ({artifact.model.model_type}, "
        f"{artifact.model.num_layers} layers, d={artifact.model.hidden_size})",
    )
    for key, value in vars(artifact.provenance).items():
        table.add_row(key, str(value))
    console.print(table)


def _named_dirs(items: list[str]) -> list[tuple[str, Path]]:
    """Parse repeated NAME=DIR options, keeping their order (it is the table's column order)."""
    pairs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise typer.BadParameter(f"expected NAME=DIR, got {item!r}")
        if name in pairs:
            raise typer.BadParameter(f"artifact name {name!r} given twice")
        pairs[name] = Path(path)
    return list(pairs.items())


def _write_report(out: Path | None, report: dict[str, Any], markdown: str) -> None:
    """Write a report with the command that produced it (*.json as JSON, else Markdown)."""
    if out is None:
        return
    command = shlex.join(["ce-bench", *sys.argv[1:]])
    if out.suffix == ".json":
        out.write_text(json.dumps({"command": command, **report}, indent=2) + "\n")
    else:
        out.write_text(f"Command: `{command}`\n\n{markdown}")
    console.print(f"wrote {out}")


def _lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter(f"{path} has no non-empty lines")
    return lines
