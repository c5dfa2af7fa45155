"""Privacy erasure (Knowledge Microscope): fact injection, FeatureEdit, the fact-neuron baseline,
the task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ce_bench.tasks.privacy.task import doc_metrics, erased_ids, load_docs, pooled_share
from sae_lens import StandardSAE, StandardSAEConfig
from typer.testing import CliRunner

from ce_bench.artifacts import ArtifactError, save_artifact
from ce_bench.cli import app
from ce_bench.embedded import load_model
from ce_bench.inject import REPORT_FILE, InjectSettings, inject_facts, memorised
from ce_bench.interventions import build_intervention
from ce_bench.interventions.featureedit import marked_rows
from ce_bench.locate.privacy import (
    FactNeuronsConfig,
    FeatureEditConfig,
    feature_effects,
    locate_fact_neurons,
    locate_featureedit,
)
from ce_bench.locate.sae_features import SAESource
from ce_bench.private_facts import Fact, FactSet, load_fact_set
from ce_bench.scoring import TokenScore, golden_batch
from ce_bench.sites import Site, attach_hook
from tests.conftest import tiny_model
from tests.helpers import attached, lm_eval, make_artifact, results_of

LAYER = 1


def _fact(id_: str, value: str, *prompts: str) -> Fact:
    return Fact(id_, "x", "code", value, prompts)


# Short values and prompts: a 3-layer random model memorises them in a few dozen steps.
TINY_FACTS = FactSet(
    facts=(
        _fact("pf-001", "red fox", "The code of Ann is", "Ann's code:"),
        _fact("pf-002", "blue owl", "The code of Bo is", "Bo's code:"),
    ),
    controls=(_fact("pc-001", "green cat", "The code of Cy is", "Cy's code:"),),
    digest="tiny",
)
FAST = InjectSettings(lr=1e-2, max_steps=120, batch_size=8, first_layer=0)


@pytest.fixture(scope="module")
def injected(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("injected") / "model"
    return inject_facts(str(tiny_llama_dir), out, FAST, TINY_FACTS, device="cpu")


# --------------------------------------------------------------------------- the fact set
def test_the_shipped_set_loads_with_its_facts_and_controls() -> None:
    data = load_fact_set()
    assert (len(data.facts), len(data.controls)) == (42, 43)
    assert all(len(f.prompts) == 5 for f in data.facts)
    assert data.select(["pf-002", "pf-001"])[0].value == "dorian.achterfeld@example.com"


def test_an_unknown_fact_id_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown fact id.*pf-999"):
        load_fact_set().select(["pf-001", "pf-999"])


def test_a_fact_file_without_prompts_names_the_record_and_field(tmp_path: Path) -> None:
    record = {"id": "pf-1", "person": "A", "attribute": "b", "value": "c", "prompts": []}
    path = tmp_path / "facts.json"
    path.write_text(json.dumps({"facts": [record], "controls": []}))
    with pytest.raises(ValueError, match=r"facts\[0\]\.prompts"):
        load_fact_set(path)


# --------------------------------------------------------------------------- injection
def test_injection_memorises_every_training_prompt_and_reports_it(injected: Path) -> None:
    report = json.loads((injected / REPORT_FILE).read_text())
    assert report["memorised_all"] and report["memorised"]["facts"] == 1.0
    assert report["memorised"]["controls"] == 1.0
    assert 0 < report["steps"] <= FAST.max_steps and report["last_loss"] < report["first_loss"]
    model, tokenizer = load_model(str(injected), "cpu")
    assert memorised(model, tokenizer, TINY_FACTS.training_pairs()).all()


def test_injection_with_the_same_settings_reuses_the_saved_model(
    injected: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr("ce_bench.inject.train_until_memorised", fail)
    assert inject_facts(str(tiny_llama_dir), injected, FAST, TINY_FACTS, device="cpu") == injected


def test_injection_refuses_to_overwrite_a_folder_it_did_not_write(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an injected model"):
        inject_facts(str(tiny_llama_dir), tmp_path, FAST, TINY_FACTS, device="cpu")


# --------------------------------------------------------------------------- FeatureEdit
def test_marked_rows_are_the_large_entries_of_the_unit_directions() -> None:
    directions = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 2.0, -0.1]])
    # unit rows: [0.6, 0.8, 0, 0] and [0, 0, 0.9988, -0.0499]
    assert marked_rows(directions, 0.5).tolist() == [True, True, True, False]
    assert marked_rows(directions, 0.7).tolist() == [False, True, True, False]
    assert marked_rows(directions, 0.04).tolist() == [True, True, True, True]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_featureedit_zeroes_the_marked_output_rows_and_restores_w_down_exactly(arch: str) -> None:
    model = tiny_model(arch)
    directions = torch.zeros(2, 32)
    directions[0, [3, 7]] = torch.tensor([1.0, -1.0])
    directions[1, 20] = 5.0
    art = make_artifact(model, "featureedit", Site("mlp_act", LAYER), {}, directions=directions)
    module = model.get_submodule(
        "model.layers.1.mlp.down_proj" if arch == "llama" else "transformer.h.1.mlp.c_proj"
    )
    original = module.weight.detach().clone()
    rows = original if arch == "llama" else original.T  # (d_model, d_ff) either way
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    with attached(model, art) as switch, torch.no_grad():
        model(ids)
        edited = module.weight.detach().clone()
        edited_rows = edited if arch == "llama" else edited.T
        assert torch.equal(edited_rows[[3, 7, 20]], torch.zeros(3, rows.shape[1]))
        keep = [i for i in range(32) if i not in (3, 7, 20)]
        assert torch.equal(edited_rows[keep], rows[keep])
        with switch.set(False):
            model(ids)
            assert torch.equal(module.weight, original)
    assert torch.equal(module.weight, original)


def test_featureedit_directions_of_the_wrong_width_name_the_tensor() -> None:
    model = tiny_model("llama")
    art = make_artifact(
        model, "featureedit", Site("mlp_act", LAYER), {}, directions=torch.ones(2, 48)
    )
    with pytest.raises(ArtifactError, match=r"'directions'.*\(facts, 32\)"):
        build_intervention(art, model)
    art = make_artifact(
        model, "featureedit", Site("mlp_act", LAYER), {"tau_2": 1.5}, directions=torch.ones(1, 32)
    )
    with pytest.raises(ArtifactError, match="tau_2 must lie in"):
        build_intervention(art, model)


def _tiny_sae(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    sae.cfg.metadata.hook_name = f"model.layers.{LAYER}"
    with torch.no_grad():
        sae.b_enc.fill_(0.5)  # most features active at every token
    sae.save_model(tmp_path / "sae")
    return tmp_path / "sae"


def _reference_drop(model, tokenizer, sae, fact: Fact, feature: int) -> float:  # type: ignore[no-untyped-def]
    """Delta-Prob of one feature, written out: one forward without, one with the ablation."""
    batch = golden_batch(tokenizer, [(fact.training_prompt, fact.value)], torch.device("cpu"))

    answer = batch.labels[0][batch.labels[0] != -100]  # the row's last tokens

    def prob() -> float:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, logits_to_keep=len(answer) + 1).logits
        logprobs = logits[0, :-1].log_softmax(-1)  # the positions predicting the answer
        return float(logprobs.gather(-1, answer[:, None]).sum().exp())

    def ablate(h: torch.Tensor) -> torch.Tensor:
        return h - sae.encode(h)[..., feature, None] * sae.W_dec[feature]

    before = prob()
    handle = attach_hook(model, Site("resid_post", LAYER), ablate)
    try:
        after = prob()
    finally:
        handle.remove()
    return (before - after) / before


def test_feature_effects_match_ablating_each_feature_one_at_a_time(
    injected: Path, tmp_path: Path
) -> None:
    from ce_bench.interventions.sae import load_sae

    model, tokenizer = load_model(str(injected), "cpu")
    sae = load_sae(str(_tiny_sae(tmp_path)))
    fact = TINY_FACTS.facts[0]
    ranked, prob, active = feature_effects(model, tokenizer, sae, fact, candidates=16)
    assert len(ranked) == active > 1 and 0 < prob <= 1
    for feature, drop in ranked:
        reference = _reference_drop(model, tokenizer, sae, fact, feature)
        assert drop == pytest.approx(reference, abs=1e-4)
    assert ranked[0][1] == max(d for _, d in ranked)


def test_locate_feature_edit_writes_the_chosen_features_directions(
    injected: Path, tmp_path: Path
) -> None:
    model, tokenizer = load_model(str(injected), "cpu")
    sae_path = _tiny_sae(tmp_path)
    config = FeatureEditConfig(source=SAESource(sae_path=str(sae_path)))
    art = locate_featureedit(model, tokenizer, TINY_FACTS.facts, config, model_name="tiny")
    from ce_bench.interventions.sae import load_sae

    w_dec = load_sae(str(sae_path)).W_dec.detach()
    features = [c["feature"] for c in art.provenance.report["choices"]]
    assert torch.equal(art.tensors["directions"], w_dec[features])
    assert art.site == Site("mlp_act", LAYER) and art.params == {"tau_2": 0.1}
    assert art.provenance.report["erased"] == ["pf-001", "pf-002"]
    build_intervention(art, model)


# --------------------------------------------------------------------------- the task's metrics
def _score(greedy: list[int], target: list[int]) -> TokenScore:
    return TokenScore(-1.0, greedy, target)


def test_fact_metrics_count_only_what_the_unedited_model_produced() -> None:
    target = [5, 6]
    base = [_score([5, 6], target), _score([5, 6], target), _score([5, 9], target)]
    edited = [_score([5, 7], target), _score([5, 6], target), _score([5, 9], target)]
    # training prompt: known and erased; paraphrase 1: known, kept; paraphrase 2: never known
    metrics = doc_metrics("fact", base, edited)
    assert metrics["reliability"] == (1, 1)
    assert metrics["generalization"] == (0, 1)
    assert metrics["recall"] == (0, 1) and metrics["recall_base"] == (1, 1)
    assert metrics["paraphrase_recall"] == (1, 2) and metrics["paraphrase_recall_base"] == (1, 2)
    assert metrics["locality"] == (0, 0) and metrics["control_recall"] == (0, 0)


def test_control_locality_needs_every_argmax_unchanged() -> None:
    target = [1, 2, 3]
    base = [_score([1, 2, 3], target), _score([1, 2, 4], target)]
    edited = [_score([1, 2, 3], target), _score([1, 8, 4], target)]  # one token changed
    metrics = doc_metrics("control", base, edited)
    assert metrics["locality"] == (1, 2)
    assert metrics["control_recall"] == (1, 2) and metrics["control_recall_base"] == (1, 2)
    assert metrics["reliability"] == (0, 0)


def test_pooled_share_sums_over_documents_and_is_nan_when_nothing_counts() -> None:
    assert pooled_share([(1, 1), (0, 0), (2, 4)]) == 0.6
    assert math.isnan(pooled_share([(0, 0)]))


def test_documents_alternate_the_erased_facts_and_the_controls(tmp_path: Path) -> None:
    docs = load_docs(facts="pf-003,pf-001")["test"]
    assert [d["id"] for d in docs][:5] == ["pf-003", "pc-001", "pf-001", "pc-002", "pc-003"]
    assert len(docs) == 2 + 43 and docs[0]["kind"] == "fact" and docs[1]["kind"] == "control"
    model = tiny_model("llama")
    directions = torch.ones(1, 32)
    art = make_artifact(model, "featureedit", Site("mlp_act", 1), {}, directions=directions)
    art.provenance.report["erased"] = ["pf-007"]
    path = save_artifact(art, tmp_path / "fe")
    assert erased_ids({"intervention": str(path)}) == ["pf-007"]
    assert erased_ids({}) is None


# --------------------------------------------------------------------------- commands and lm_eval
def test_commands_reject_a_missing_model_and_an_unknown_fact(
    injected: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["inject-facts", "--model", "/no/such", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not a model folder" in result.output
    args = ["locate", "fact-neurons", "--layer", "1", "--out", "x"]
    result = runner.invoke(app, [*args, "--model", "/no/such/model"])
    assert result.exit_code != 0 and "model folder not found" in result.output
    result = runner.invoke(app, [*args, "--model", str(injected), "--fact", "pf-999"])
    assert result.exit_code != 0 and "pf-999" in result.output


@pytest.mark.slow
def test_lm_eval_scores_fact_neuron_erasure_on_and_off_in_one_run(
    injected: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two threads on two busy cores: several x slower
    facts_file = tmp_path / "facts.json"
    records = {
        "facts": [vars(f) | {"prompts": list(f.prompts)} for f in TINY_FACTS.facts],
        "controls": [vars(f) | {"prompts": list(f.prompts)} for f in TINY_FACTS.controls],
    }
    facts_file.write_text(json.dumps(records))
    model, tokenizer = load_model(str(injected), "cpu")
    config = FactNeuronsConfig(layer=LAYER, steps=4)
    art = locate_fact_neurons(model, tokenizer, TINY_FACTS.facts, config, model_name=str(injected))
    path = save_artifact(art, tmp_path / "kn")
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"pretrained={injected},intervention={path}",
        "--tasks", "privacy_erasure",
        "--metadata", json.dumps({"facts_file": str(facts_file)}),
        "--limit", "3", "--output_path", str(tmp_path / "out"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path / "out")["results"]["privacy_erasure"]
    assert results["recall_base,none"] == 1.0  # the injected model knows both training prompts
    assert results["control_recall_base,none"] >= 0.5  # its training prompt, at least
    for name in ("reliability", "generalization", "locality", "recall", "control_recall"):
        assert 0.0 <= results[f"{name},none"] <= 1.0 or math.isnan(results[f"{name},none"])


def test_privacy_report_injects_locates_and_evaluates_each_arm_once(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ce_bench.reports.privacy import PrivacyConfig, run_privacy_report

    facts_file = tmp_path / "facts.json"
    records = {
        "facts": [vars(f) | {"prompts": list(f.prompts)} for f in TINY_FACTS.facts],
        "controls": [vars(f) | {"prompts": list(f.prompts)} for f in TINY_FACTS.controls],
    }
    facts_file.write_text(json.dumps(records))
    config = PrivacyConfig(
        model=str(tiny_llama_dir), facts_file=facts_file,
        inject={**vars(FAST), "first_layer": LAYER}, sae_path=str(_tiny_sae(tmp_path)),
        arms=(("fe", "featureedit", {"tau_2": 0.1}), ("kn", "fact-neurons", {"steps": 4})),
        out=tmp_path / "report",
    )  # fmt: skip
    rows = run_privacy_report(config)
    assert [row[0] for row in rows] == ["fe", "kn"]
    for row in rows:
        zeroed, *metrics, ppl = row[1:]
        assert int(zeroed.replace(",", "")) > 0 and ppl[0] in "+-"
        assert all(m == "nan" or 0.0 <= float(m) <= 1.0 for m in metrics)
    assert "| fe |" in (config.out / "table.md").read_text()

    def must_not_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished arm ran again")

    monkeypatch.setattr("ce_bench.reports.privacy._locate", must_not_run)
    monkeypatch.setattr("ce_bench.reports.privacy._evaluate", must_not_run)
    assert run_privacy_report(config) == rows  # resumed: the injection is cached, arms are kept
