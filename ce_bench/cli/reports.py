"""The report commands that reproduce the seeds' tables, and the offline model/SAE builders."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ce_bench.cli.common import (
    DEVICE,
    FACTS_FILE,
    MODEL,
    VERBOSE,
    app,
    class_dataset,
    console,
    given_options,
)
from ce_bench.console import log_file_for, quiet_to


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
    verbose: bool = VERBOSE,
) -> None:
    """NeuronLens Table 3/4: neuron masking vs activation range masking for each class, with
    Acc/Conf/CAcc/CConf and the PPL and MMLU side effects, base and edited from one run each."""
    from ce_bench.reports.erasure import ErasureConfig, run_erasure_report

    class_dataset(dataset, target or [])
    config = ErasureConfig(
        model=model, dataset=dataset, layer=layer, targets=tuple(target or ()), phi=phi,
        ranking=ranking, per_class=per_class, limit=limit, side_limit=side_limit, data=data,
        out=out, baselines=baselines,
    )  # fmt: skip
    with quiet_to(log_file_for(out, verbose, console), console):
        run_erasure_report(config, console)
    console.print(f"tables in {out}/")


@app.command("lifelong-report")
def lifelong_report_cmd(
    edits: str = typer.Option("zsre", help="zsre (Table 1) or selfcheckgpt (Table 2)."),
    editor: list[str] | None = typer.Option(
        None,
        help="NAME[:key=value,...], repeatable; default MicroEdit's rows (ft, ft:ewc_lambda=0.1,"
        " rome, memit, mend, grace, wise, microedit:alpha=auto) and alphaedit",
    ),
    num_edits: list[int] | None = typer.Option(
        None, help="T, repeatable; default 1 10 100 (zsre) or 1 10 50 (selfcheckgpt)."
    ),
    model: str = MODEL,
    out: Path | None = typer.Option(None, help="Where table.md and results.json go."),
    verbose: bool = VERBOSE,
) -> None:
    """MicroEdit Tables 1-2: each editor after T sequential edits (Rel/Gen/Loc/Avg or PPL/Loc);
    resumes from the results.json of an interrupted run."""
    from ce_bench.reports.lifelong import LifelongReportConfig, run_lifelong_report

    defaults = LifelongReportConfig()
    config = LifelongReportConfig(
        model=model,
        edits=edits,
        editors=tuple(editor or defaults.editors),
        num_edits=tuple(num_edits or defaults.num_edits),
        out=out or Path("results/lifelong") / edits,
    )
    with quiet_to(log_file_for(config.out, verbose, console), console):
        run_lifelong_report(config, console)
    console.print(f"tables in {config.out}/")


@app.command("reproduce")
def reproduce_cmd(
    name: str = typer.Argument(..., help="concept, erasure, lifelong or privacy."),
    full: bool = typer.Option(False, "--full", help="Every prompt / every dataset / Table 2 too."),
    out: Path | None = typer.Option(None, help="Output folder; default results/reproduce/NAME."),
    verbose: bool = VERBOSE,
) -> None:
    """A paper's main table at the paper's size (the runs behind README's findings): says what
    runs and how long it took on 2 CPU cores, then runs it; an interrupted run resumes."""
    from ce_bench.reports.reproduce import PRESETS, reproduce

    if name not in PRESETS:
        raise typer.BadParameter(f"{name!r}: choose one of {', '.join(PRESETS)}")
    folder = out or Path("results/reproduce") / (name + ("-full" if full else ""))
    with quiet_to(log_file_for(folder, verbose, console), console):
        reproduce(name, full, folder, console)
    console.print(f"tables in {folder}/")


@app.command("train-mend")
def train_mend_cmd(
    model: str = MODEL,
    train: str = typer.Option(
        "zsre_train",
        help="ZsRE-format training records: zsre_train (shipped, synthetic) or a file such as"
        " MEND's zsre_mend_train.json.",
    ),
    max_steps: int | None = typer.Option(
        None, help="Training records seen at most; default 100000 (EasyEdit)."
    ),
    val_every: int | None = typer.Option(None, help="Validate every N steps; default 1000."),
    patience: int | None = typer.Option(None, help="Stop N steps after the best; default 30000."),
    device: str | None = DEVICE,
    out: Path | None = typer.Option(None, help="Where to save it; default: the ce-bench cache."),
    force: bool = typer.Option(False, "--force", help="Retrain even if it is cached."),
) -> None:
    """Train MEND's gradient-transform network for a model (the `mend` editor uses the newest
    one in the cache, or mend_path=DIR)."""
    from ce_bench.embedded import load_model
    from ce_bench.lifelong.mend import MENDNet
    from ce_bench.lifelong.mend_training import MENDTrainConfig, cache_dir, train_mend
    from ce_bench.lifelong.records import load_stream
    from ce_bench.runtime import model_cache_name

    given = {"max_steps": max_steps, "val_every": val_every, "patience": patience}
    config = MENDTrainConfig(train=train, **given_options(**given))
    digest = load_stream(train).digest  # a missing or malformed file fails before the model loads
    model_, tokenizer = load_model(model, device)
    path = out or cache_dir(model_cache_name(model_), config, digest)
    if (path / "mend.json").is_file() and not force:
        _, description = MENDNet.load(path)
    else:
        path, description = train_mend(model_, tokenizer, config, path)
    trained = description["training"]
    table = Table(title=f"MEND for {description['model']}", show_header=False)
    table.add_row("edited layers (W_down)", ", ".join(map(str, description["layers"])))
    table.add_row("training records / held out", f"{trained['records']} / {trained['held_out']}")
    table.add_row("steps (best at)", f"{trained['steps']} ({trained['best_step']})")
    table.add_row(
        "held-out edit accuracy",
        f"{trained['val_edit_acc']:.3f} (unedited {trained['unedited_val_acc']:.3f})",
    )
    table.add_row("seconds", str(trained["seconds"]))
    console.print(table)
    console.print(f"MEND: {path}")


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
    """Fine-tune a model until it has memorised the private facts (Knowledge Microscope's
    injection)."""
    from ce_bench.inject import REPORT_FILE, InjectSettings, inject_facts
    from ce_bench.private_facts import load_fact_set

    given = given_options(
        lr=lr, max_steps=max_steps, batch_size=batch_size, first_layer=first_layer,
        last_layer=last_layer, seed=seed,
    )  # fmt: skip
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
    settings = given_options(**given)
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
