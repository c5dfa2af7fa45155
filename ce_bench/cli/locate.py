"""`ce-bench locate ...`: each locate method writes an artifact directory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ce_bench.cli.common import (
    DEVICE,
    EMOTION,
    FACTS,
    FACTS_FILE,
    INJECTED,
    LAYER,
    LIMIT,
    MODEL,
    OUT,
    SCENARIOS,
    app,
    class_dataset,
    console,
    given_options,
    lines_of,
)
from ce_bench.runtime import EMBEDDED_NAME

locate_app = typer.Typer(help="Locate an intervention and write it as an artifact directory.")
app.add_typer(locate_app, name="locate")


@locate_app.command("diffmean")
def locate_diffmean_cmd(
    positive: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    negative: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    layer: int = typer.Option(..., help="Layer L (0-based): the vector lives at resid_post of L."),
    out: Path = typer.Option(..., help="Artifact directory to write."),
    model: str = MODEL,
    aggregate: str = typer.Option("last", help="last token or mean over tokens."),
    strength: float = typer.Option(1.0, help="Default k of h + k*v (model_args may override)."),
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
) -> None:
    """Difference of mean residual activations, positive minus negative (Unified Concept Editing Eq.
    6)."""
    from ce_bench.embedded import load_model
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.diffmean import DiffmeanConfig, locate_diffmean

    config = DiffmeanConfig(layer=layer, aggregate=aggregate, strength=strength)
    lm, tokenizer = load_model(model, device)
    positives, negatives = lines_of(positive), lines_of(negative)
    artifact = locate_diffmean(lm, tokenizer, positives, negatives, config, model_name=model)
    save_intervention(artifact, out)
    norm = float(artifact.tensors["vector"].norm())
    console.print(f"wrote {out} (steer at {artifact.site}, |v| = {norm:.3f})")


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
    from ce_bench.embedded import load_model
    from ce_bench.emotions import EMOTIONS
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion

    if emotion not in EMOTIONS:
        raise typer.BadParameter(
            f"{emotion!r} is not one of {', '.join(EMOTIONS)}", param_hint="--emotion"
        )
    data = EmotionData.load(scenarios)
    lm, tokenizer = load_model(model, device)
    given = given_options(**options)
    job = EmotionJob(lm, tokenizer, model, data, emotion, layer, limit, sae, given)
    artifact = locate_emotion(method, job)
    save_intervention(artifact, out)
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
    """Mean residual of the emotion's prompts minus the other emotions' (Unified Concept Editing Eq.
    6)."""
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
        if model != EMBEDDED_NAME:
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
    """Fine-tune only W_down of the layer on prompt + golden answer (Unified Concept Editing section
    2)."""
    options = {"lr": lr, "epochs": epochs}
    artifact = _locate("sft", emotion, layer, out, model, scenarios, limit, device, options)
    report = artifact.provenance.report
    console.print(
        f"wrote {out} (weight_delta of W_down at layer {layer}; answer loss"
        f" {report['first_loss']:.3f} -> {report['last_loss']:.3f})"
    )


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
    """Activation ranges of one class for erasure (NeuronLens 5.1, Algorithm 1)."""
    from ce_bench.embedded import load_model
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.ranges import RangesConfig, locate_ranges
    from ce_bench.locate.sae_features import SAESource

    spec = class_dataset(dataset, [target])
    sae = SAESource(sae_path, sae_release, sae_id) if (sae_path or sae_release) else None
    config = RangesConfig(
        target=target, layer=-1 if layer is None else layer, ranking=ranking, top=top, tau=tau,
        phi=phi, gate=gate, source=data, per_class=per_class, sae=sae,
    )  # fmt: skip
    lm, tokenizer = load_model(model, device)
    artifact = locate_ranges(lm, tokenizer, spec, config, model_name=model)
    save_intervention(artifact, out)
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
    strength: float = typer.Option(-2.0, help="a of h + a r (NeuronLens M: -2)."),
    model: str = MODEL,
    device: str | None = DEVICE,
    data: str = typer.Option("shipped", help="shipped (offline set) or hub."),
    per_class: int | None = typer.Option(None, help="Training examples per class; default all."),
) -> None:
    """NeuronLens Appendix M baselines: r = class mean - other classes' mean at the label token."""
    from ce_bench.embedded import load_model
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.ranges import ClassSteeringConfig, locate_class_direction

    spec = class_dataset(dataset, [target])
    config = ClassSteeringConfig(
        target=target, layer=-1 if layer is None else layer, kind=kind, strength=strength,
        source=data, per_class=per_class,
    )  # fmt: skip
    lm, tokenizer = load_model(model, device)
    artifact = locate_class_direction(lm, tokenizer, spec, config, model_name=model)
    save_intervention(artifact, out)
    console.print(f"wrote {out}: {artifact.kind} of {target} at {artifact.site}")


def _privacy_inputs(model: str, facts: list[str] | None, facts_file: Path | None, device: Any):  # type: ignore[no-untyped-def]
    """(model, tokenizer, facts to erase), every input checked before the model loads."""
    from ce_bench.embedded import load_model
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
    """FeatureEdit (Knowledge Microscope): per fact the SAE feature with the largest Delta-Prob, its
    decoder direction's large coordinates zeroed in W_down."""
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.privacy import FeatureEditConfig, locate_featureedit
    from ce_bench.locate.sae_features import SAESource
    from ce_bench.runtime import free_cores, torch_threads

    options = given_options(tau_2=tau_2)
    lm, tokenizer, facts = _privacy_inputs(model, fact, facts_file, device)
    if not (sae_path or sae_release):
        from ce_bench.sae_training import ensure_sae

        # SAEs of the base model, as Knowledge Microscope uses Gemma Scope's
        sae_path = str(ensure_sae(layer))
    config = FeatureEditConfig(source=SAESource(sae_path, sae_release, sae_id), **options)
    with torch_threads(free_cores()):
        artifact = locate_featureedit(lm, tokenizer, facts, config, model_name=model)
    save_intervention(artifact, out)
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
    neuron baseline of Knowledge Microscope)."""
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.privacy import FactNeuronsConfig, locate_fact_neurons
    from ce_bench.runtime import free_cores, torch_threads

    options = given_options(steps=steps, threshold=threshold, max_neurons=max_neurons)
    config = FactNeuronsConfig(layer=layer, **options)
    lm, tokenizer, facts = _privacy_inputs(model, fact, facts_file, device)
    with torch_threads(free_cores()):
        artifact = locate_fact_neurons(lm, tokenizer, facts, config, model_name=model)
    save_intervention(artifact, out)
    console.print(
        f"wrote {out}: {len(artifact.tensors['neurons'])} neurons of {len(facts)} facts zeroed"
        f" at {artifact.site}"
    )
