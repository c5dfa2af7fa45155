"""Class erasure (NeuronLens): range arithmetic, locating ranges, and the erasure task's metrics."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from ce_bench.tasks.erasure.task import (
    doc_metrics,
    load_docs,
    other_classes_mean,
    target_mean,
    trimmed_mean,
)

from ce_bench.artifacts import ArtifactError, save_artifact
from ce_bench.classification import DATASETS, choose_shots, few_shot_prompt, load_examples
from ce_bench.embedded import load_model
from ce_bench.interventions import build_intervention
from ce_bench.interventions.ranges import RangeMaskParams, mask_units
from ce_bench.locate.ranges import (
    ClassSteeringConfig,
    RangesConfig,
    linear_probe,
    locate_class_direction,
    locate_ranges,
    saliency,
    top_fraction,
    training_activations,
)
from ce_bench.reports.erasure import BASELINES, GATES, ErasureConfig, run_erasure_report
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import attached, lm_eval, make_artifact, recording, results_of

AGNEWS = DATASETS["agnews"]
UNITS = {
    "neurons": torch.tensor([0, 2]),
    "mu": torch.tensor([1.0, -2.0]),
    "sigma": torch.tensor([0.4, 0.2]),
    "direction": torch.tensor([0.5, 1.0]),
}
# unit 0: range [0, 2] at tau 2.5; unit 2: range [-2.5, -1.5]
INSIDE = torch.tensor([[1.5, 7.0, -2.0, 3.0]])  # both selected units in range
OUTSIDE = torch.tensor([[2.5, 7.0, -1.0, 3.0]])  # both out of range


def _mask(h: torch.Tensor, **params) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return mask_units(h, UNITS, RangeMaskParams(**params))


@pytest.mark.parametrize(
    ("phi", "inside"),
    [
        ("zero", [0.0, 7.0, 0.0, 3.0]),
        ("dampen", [0.125 * 1.5, 7.0, 0.125 * -2.0, 3.0]),
        ("mean", [1.0, 7.0, -2.0, 3.0]),
        ("steer", [1.5 - 2 * 0.5, 7.0, -2.0 - 2 * 1.0, 3.0]),
    ],
)
def test_each_phi_applies_inside_the_range_and_nowhere_else(phi: str, inside: list) -> None:
    assert _mask(INSIDE, phi=phi).squeeze(0).tolist() == pytest.approx(inside)
    assert torch.equal(_mask(OUTSIDE, phi=phi), OUTSIDE)


def test_neuron_masking_applies_phi_regardless_of_range() -> None:
    assert _mask(OUTSIDE, phi="zero", gate="always").squeeze(0).tolist() == [0.0, 7.0, 0.0, 3.0]


def test_adaptive_dampening_removes_the_mean_and_keeps_beta_at_the_boundary() -> None:
    at_mean = torch.tensor([[1.0, 0.0, -2.0, 0.0]])
    assert _mask(at_mean, phi="adaptive").squeeze(0).tolist() == [0.0, 0.0, 0.0, 0.0]
    edge = torch.tensor([[2.0, 0.0, -1.5, 0.0]])  # mu + 2.5 sigma for both units
    assert _mask(edge, phi="adaptive").squeeze(0).tolist() == pytest.approx([1.0, 0, -0.75, 0])
    halfway = torch.tensor([[1.5, 0.0, -2.0, 0.0]])  # |x - mu| = tau sigma / 2: a = beta / 2
    assert _mask(halfway, phi="adaptive")[0, 0].item() == pytest.approx(0.25 * 1.5)


def test_range_mask_on_a_model_edits_only_in_range_values() -> None:
    model = tiny_model("llama")
    site = Site("resid_post", 1)
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    with recording(model, site) as seen, torch.no_grad():
        model(ids)
    h = seen[0]
    units = torch.tensor([3, 7])
    mu, sigma = h[0, 0, units], torch.full((2,), 1e-7)  # a range around one exact value
    art = make_artifact(
        model, "range_mask", site, {"phi": "zero", "positions": "all"},
        neurons=units, mu=mu, sigma=sigma, direction=torch.zeros(2),
    )  # fmt: skip
    with attached(model, art), recording(model, site) as edited, torch.no_grad():
        model(ids)
    after = edited[0]
    assert after[0, 0, units].tolist() == [0.0, 0.0]  # the matching position is erased
    assert torch.equal(after[0, 1:, units], h[0, 1:, units])  # the others are not
    assert torch.equal(after[..., :3], h[..., :3])


def test_bad_range_artifacts_fail_when_built() -> None:
    model = tiny_model("llama")
    site = Site("resid_post", 1)
    good = {"neurons": torch.tensor([1]), "mu": torch.zeros(1), "sigma": torch.ones(1)}
    cases = [
        ({**good, "mu": torch.zeros(2), "direction": torch.zeros(1)}, "mu"),
        ({**good, "sigma": -torch.ones(1), "direction": torch.zeros(1)}, "sigma"),
        ({**good, "neurons": torch.tensor([99]), "direction": torch.zeros(1)}, "neurons"),
        (good, "direction"),
    ]
    for tensors, field in cases:
        with pytest.raises(ArtifactError, match=field):
            build_intervention(make_artifact(model, "range_mask", site, {}, **tensors), model)


def test_max_probeless_and_probe_rankings_find_the_unit_that_marks_the_class() -> None:
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(40)
    h = torch.randn(120, 8)
    h[labels == 1, 5] += 4.0  # unit 5 is large exactly for class 1
    for ranking in ("max", "probeless", "probe"):
        assert int(saliency(h, labels, 1, ranking).argmax()) == 5, ranking
    assert linear_probe(h, labels).shape == (8, 3)
    assert top_fraction(torch.arange(10.0), 0.3).tolist() == [9, 8, 7]


def test_unknown_class_is_an_error_listing_the_valid_ones(tiny_llama_dir) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    with pytest.raises(ValueError, match="unknown class 'Weather'.*World, Sports, Business"):
        locate_ranges(
            model, tokenizer, AGNEWS, RangesConfig(target="Weather", layer=1), model_name="tiny"
        )
    assert AGNEWS.class_index("technology") == AGNEWS.class_index("Sci/Tech") == 3


def test_located_ranges_are_the_target_class_statistics_of_the_top_units(tiny_llama_dir) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    config = RangesConfig(target="Sports", layer=1, per_class=6)
    art = locate_ranges(model, tokenizer, AGNEWS, config, model_name="tiny")
    train = load_examples(AGNEWS, "train")
    shots = choose_shots(AGNEWS, train)
    sports = [e for e in train if e.label == 1 and e not in shots][:6]
    from ce_bench.locate.activations import collect_activations

    h = collect_activations(
        model, tokenizer, [few_shot_prompt(AGNEWS, e.text, shots) for e in sports],
        Site("resid_post", 1), "last",
    )  # fmt: skip
    units = art.tensors["neurons"]
    assert units.numel() == math.ceil(0.3 * 32)
    assert torch.equal(units, h.abs().mean(0).argsort(descending=True)[: units.numel()])
    torch.testing.assert_close(art.tensors["mu"], h[:, units].mean(0))
    torch.testing.assert_close(art.tensors["sigma"], h[:, units].std(0, correction=0))
    assert art.params["positions"] == "last" and art.provenance.report["target"] == "Sports"


@pytest.fixture(scope="module")
def sports_ranges(tmp_path_factory, embedded_dir):  # type: ignore[no-untyped-def]
    model, tokenizer = load_model("smollm2-135m", "cpu")
    config = RangesConfig(target="Sports", layer=28, per_class=8)
    art = locate_ranges(model, tokenizer, AGNEWS, config, model_name="smollm2-135m")
    return save_artifact(art, tmp_path_factory.mktemp("ranges") / "sports")


@pytest.mark.slow
def test_lm_eval_run_reports_base_and_edited_class_metrics_from_one_run(
    tmp_path, sports_ranges
) -> None:
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"intervention={sports_ranges}",
        "--tasks", "erasure_agnews",
        "--limit", "8",
        "--output_path", str(tmp_path),
        "--log_samples",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = results_of(tmp_path)["results"]["erasure_agnews"]
    for name in ("acc", "conf", "cacc", "cconf"):
        base, edited = metrics[f"{name}_base,none"], metrics[f"{name},none"]
        assert 0 <= base <= 1 and 0 <= edited <= 1
        assert metrics[f"{name}_delta,none"] == pytest.approx(edited - base, abs=1e-9)
    (samples,) = tmp_path.rglob("samples_erasure_agnews_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {r["doc"]["class"] for r in rows} == {"World", "Sports", "Business", "Sci/Tech"}
    assert all(r["doc"]["targets"] == ["Sports"] for r in rows)  # read from the artifact
    assert all(len(r["resps"]) == 8 for r in rows)  # 4 labels, OFF and ON


def test_the_task_rejects_an_unknown_target_and_needs_one() -> None:
    with pytest.raises(ValueError, match="unknown class 'Weather'.*Sci/Tech"):
        load_docs(dataset="agnews", target="Weather")
    with pytest.raises(ValueError, match="set the class to erase"):
        load_docs(dataset="agnews")
    docs = load_docs(dataset="agnews", target="technology")["test"]
    assert docs[0]["targets"] == ["Sci/Tech"] and len(docs) == 64
    assert docs[0]["prompt"].endswith("\nTopic:") and docs[0]["choices"][3] == "Technology"
    assert load_docs(dataset="agnews", target="all")["test"][0]["targets"] == list(AGNEWS.classes)


def test_target_all_with_too_few_artifacts_fails_when_the_task_is_built(
    tmp_path, tiny_llama_dir
) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    config = RangesConfig(target="Sports", layer=1, per_class=2)
    art = locate_ranges(model, tokenizer, AGNEWS, config, model_name=str(tiny_llama_dir))
    sports = str(save_artifact(art, tmp_path / "sports"))
    with pytest.raises(ValueError, match="no artifact .* located for World, Business, Sci/Tech"):
        load_docs(dataset="agnews", target="all", intervention=sports)
    with pytest.raises(ValueError, match="located for World"):
        load_docs(dataset="agnews", target="World", intervention=sports)
    assert load_docs(dataset="agnews", target="sports", intervention=sports)["test"][0]["targets"]


def test_class_metrics_average_per_class_then_trim_over_targets() -> None:
    targets = ("A", "B")
    items = [  # (class, targets, value per target)
        ("A", targets, (0.0, 1.0)),
        ("A", targets, (1.0, 1.0)),
        ("B", targets, (1.0, 0.0)),
        ("C", targets, (1.0, math.nan)),  # NaN: left out (only_correct)
    ]
    # target A: own 0.5, others B 1.0 and C 1.0; target B: own 0.0, others A 1.0
    assert target_mean(items) == pytest.approx((0.5 + 0.0) / 2)
    assert other_classes_mean(items) == pytest.approx((1.0 + 1.0) / 2)
    assert trimmed_mean(list(range(10))) == pytest.approx(4.5)
    assert trimmed_mean([0.0] + [1.0] * 8 + [100.0]) == 1.0  # one value cut at each end
    assert math.isnan(trimmed_mean([]))


@pytest.mark.slow
def test_target_all_measures_each_class_with_its_own_artifact_in_one_run(
    tmp_path, tiny_llama_dir
) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    configs = [RangesConfig(target=name, layer=1, per_class=4) for name in AGNEWS.classes]
    paths = [
        save_artifact(
            locate_ranges(model, tokenizer, AGNEWS, config, model_name=str(tiny_llama_dir)),
            tmp_path / "artifacts" / str(i),
        )
        for i, config in enumerate(configs)
    ]
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"pretrained={tiny_llama_dir},intervention={'+'.join(map(str, paths))}",
        "--tasks", "erasure_agnews",
        "--metadata", json.dumps({"target": "all"}),
        "--limit", "8",
        "--output_path", str(tmp_path / "out"),
        "--log_samples",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = results_of(tmp_path / "out")["results"]["erasure_agnews"]
    assert 0 <= metrics["acc_base,none"] <= 1 and 0 <= metrics["cacc,none"] <= 1
    (samples,) = (tmp_path / "out").rglob("samples_erasure_agnews_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert all(len(r["resps"]) == 4 * (1 + 4) for r in rows)  # OFF, then ON for each class
    for row in rows:
        arguments = json.dumps(row["arguments"])
        assert arguments.count('"ce_bench_intervention": "off"') == 4
        for name in AGNEWS.classes:
            assert arguments.count(f'"ce_bench_target": "{name}"') == 4


@pytest.mark.slow
def test_erasure_report_compares_neuron_and_range_masking_for_every_class(
    tmp_path, tiny_llama_dir, monkeypatch
) -> None:
    config = ErasureConfig(
        model=str(tiny_llama_dir), dataset="sst2", layer=1, limit=4, side_limit=2, per_class=4,
        out=tmp_path, baselines=True,
    )  # fmt: skip
    rows = run_erasure_report(config)
    assert [r.target for r in rows] == ["negative", "positive"]
    assert list((tmp_path / "runs" / "negative" / "neuron_masking").rglob("results_*.json"))
    for row in rows:
        assert list(row.deltas) == [*GATES, *BASELINES]
        assert set(row.deltas["range masking"]) == {"acc", "conf", "cacc", "cconf", "ppl", "mmlu"}
        assert 0 <= row.base["acc"] <= 1 and row.base["ppl"] > 0
    # the unedited model is the same in both classes' runs; each class is the other's "other"
    assert rows[0].base["cacc"] == rows[1].base["acc"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["target"] for r in saved["rows"]] == ["negative", "positive", "trimmed mean"]
    assert "| trimmed mean | unedited |" in (tmp_path / "table.md").read_text()
    saved_artifacts = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("artifacts/*/*"))
    methods = ("directional_ablation", "neuron_masking", "range_masking", "steering")
    assert saved_artifacts == [
        f"artifacts/{c}/{m}" for c in ("negative", "positive") for m in methods
    ]
    gates = {
        m: json.loads((tmp_path / f"artifacts/negative/{m}/intervention.json").read_text())
        for m in methods
    }
    assert gates["neuron_masking"]["params"]["gate"] == "always"
    assert gates["range_masking"]["params"]["gate"] == "range"
    assert gates["steering"]["kind"] == "steer" and gates["steering"]["layer"] == 1  # middle of 3
    assert "| negative | SV Δ |" in (tmp_path / "table.md").read_text()

    def must_not_run(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished class ran again")

    monkeypatch.setattr("ce_bench.reports.erasure._run_row", must_not_run)
    assert (
        run_erasure_report(dataclasses.replace(config, resume=True)) == rows
    )  # resumed: nothing runs


def _loglikelihoods(*predicted: int, labels: int = 4) -> list[tuple[float, bool]]:
    """Label loglikelihoods that make each block predict the given label."""
    return [(0.0 if i == p else -5.0, False) for p in predicted for i in range(labels)]


def test_an_example_gives_base_and_per_target_values_and_only_correct_drops_misses() -> None:
    doc = {"choices": ["a", "b", "c", "d"], "label": 1, "class": "B", "targets": ["A", "B"]}
    metrics = doc_metrics(doc, _loglikelihoods(1, 1, 0))  # OFF right; ON for A right, for B wrong
    assert metrics["acc"] == ("B", ("A", "B"), (1.0, 0.0))
    assert metrics["acc_base"] == ("B", ("A", "B"), (1.0, 1.0))
    assert metrics["acc_delta"] == ("B", ("A", "B"), (0.0, -1.0))
    assert metrics["conf"][2][0] == pytest.approx(1 / (1 + 3 * math.exp(-5)))
    missed = doc_metrics(doc, _loglikelihoods(0, 1, 1), only_correct=True)  # OFF wrong
    assert all(math.isnan(v) for item in missed.values() for v in item[2])
    assert not math.isnan(doc_metrics(doc, _loglikelihoods(0, 1, 1))["acc"][2][0])


def test_sae_range_masking_edits_latents_and_keeps_the_reconstruction_error(
    tmp_path, tiny_llama_dir
) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    from ce_bench.locate.sae_features import SAESource

    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    sae.cfg.metadata.hook_name = "model.layers.1"
    sae.save_model(tmp_path / "sae")
    config = RangesConfig(
        target="Sports", layer=1, gate="always", per_class=4,
        sae=SAESource(sae_path=str(tmp_path / "sae")),
    )  # fmt: skip
    located = locate_ranges(model, tokenizer, AGNEWS, config, model_name="tiny")
    units = located.tensors["neurons"]
    assert located.params["sae_path"] == str(tmp_path / "sae") and int(units.max()) < 16
    assert located.provenance.report["ranking"] == "sae"
    art = dataclasses.replace(located, params={**located.params, "positions": "all"})
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    site = Site("resid_post", 1)
    with recording(model, site) as seen, torch.no_grad():
        model(ids)
    with attached(model, art), recording(model, site) as edited, torch.no_grad():
        model(ids)
    h = seen[0]
    with torch.no_grad():
        codes = sae.encode(h)
        masked = codes.clone()
        masked[..., units] = 0.0  # phi = zero on every selected latent (gate = always)
        expected = h + sae.decode(masked) - sae.decode(codes)
    torch.testing.assert_close(edited[0], expected, rtol=1e-4, atol=1e-5)


def test_class_steering_baselines_use_the_class_difference_of_means(tiny_llama_dir) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    acts = training_activations(model, tokenizer, AGNEWS, 1, per_class=4)
    steer = locate_class_direction(
        model,
        tokenizer,
        AGNEWS,
        ClassSteeringConfig(target="Sports", layer=1),
        model_name="tiny",
        activations=acts,
    )
    sports = acts.labels == 1
    expected = acts.h[sports].mean(0) - acts.h[~sports].mean(0)
    torch.testing.assert_close(steer.tensors["vector"], expected)
    assert steer.kind == "steer" and steer.params["strength"] == -2.0
    config = ClassSteeringConfig(target="Sports", layer=1, kind="directional_ablation")
    ablation = locate_class_direction(
        model, tokenizer, AGNEWS, config, model_name="tiny", activations=acts
    )
    assert ablation.kind == "directional_ablation"
    assert ablation.provenance.report["target"] == "Sports"
    build_intervention(ablation, model)  # a valid artifact of the existing kind


def test_artifacts_located_from_shared_activations_are_charged_for_reading_them(
    tiny_llama_dir,
) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    acts = training_activations(model, tokenizer, AGNEWS, 1, per_class=4)
    acts = dataclasses.replace(acts, seconds=100.0)  # as if reading them had taken 100 s
    config = ClassSteeringConfig(target="Sports", layer=1)
    steer = locate_class_direction(
        model, tokenizer, AGNEWS, config, model_name="tiny", activations=acts
    )
    ranges = locate_ranges(
        model, tokenizer, AGNEWS, RangesConfig(target="Sports", layer=1), model_name="tiny",
        activations=acts,
    )  # fmt: skip
    assert 100.0 <= steer.provenance.seconds < 110 and 100.0 <= ranges.provenance.seconds < 110
    fresh = locate_class_direction(model, tokenizer, AGNEWS, config, model_name="tiny")
    assert fresh.provenance.seconds < 100.0  # read inside the call: counted once
