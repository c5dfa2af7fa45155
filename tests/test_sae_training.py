"""`train_sae` runs sae-lens's real trainer on a tiny random Llama saved with a tokenizer."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from ce_bench.cli import app
from ce_bench.sae_training import SAESettings, load_report, train_sae
from ce_bench.sae_training import train as training
from ce_bench.sites import Site, site_from_hook_name
from tests.helpers import attached, make_artifact, recording

LAYER = 1
SMALL = {
    "tokens": 65_536,
    "d_sae": 64,
    "k": 8,
    "batch_size": 256,
    "generated_texts": 8,
    "generated_tokens": 8,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ce_bench_home")


@pytest.fixture
def in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CE_BENCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, home: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CE_BENCH_HOME", str(home))
        return train_sae(LAYER, str(tiny_llama_dir), **SMALL)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def _raw_activations(model, tiny_llama_dir: Path) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Activations at resid_post of LAYER for text the SAE was not trained on (BOS left out)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = (
        "Tomorrow the committee will vote on the new budget for the harbour and its ferries."
        " Several members want to spend more on repairs, others on a second ferry to the"
        " island. The vote is expected to be close, and the mayor has promised to abstain."
    )
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text)["input_ids"]]])
    with recording(model, Site("resid_post", LAYER)) as seen, torch.no_grad():
        model(ids)
    return seen[0][0, 1:]


def test_trained_sae_loads_with_sae_lens_and_reads_resid_post_of_its_layer(
    trained: Path, tiny: torch.nn.Module
) -> None:
    sae = SAE.load_from_disk(str(trained))
    assert site_from_hook_name(tiny, sae.cfg.metadata.hook_name) == Site("resid_post", LAYER)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (32, SMALL["d_sae"])
    assert sae.cfg.metadata.exclude_special_tokens is True


def test_saved_sae_reconstructs_raw_activations_in_the_models_scale(
    trained: Path, tiny: torch.nn.Module, tiny_llama_dir: Path
) -> None:
    sae = SAE.load_from_disk(str(trained))
    assert sae.cfg.normalize_activations == "none"  # the scaling factor is folded in
    acts = _raw_activations(tiny, tiny_llama_dir)
    with torch.no_grad():
        recon = sae.decode(sae.encode(acts))
    explained = 1 - (acts - recon).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    assert explained > 0.3
    assert 0.8 < float(recon.norm(dim=-1).mean() / acts.norm(dim=-1).mean()) < 1.25


def test_report_holds_held_out_statistics_and_settings(trained: Path) -> None:
    report = load_report(trained)
    assert 0.3 < report["explained_variance"] <= 1
    assert 0 < report["mean_l0"] <= SMALL["k"]
    assert 0 <= report["dead_feature_share"] < 1
    assert report["eval_tokens"] > 0
    assert report["tokens_trained"] >= SMALL["tokens"]
    assert report["settings"] == asdict(SAESettings(**SMALL))
    assert report["corpus"]["generated_documents"] == SMALL["generated_texts"]


def test_second_call_returns_the_cached_sae_without_training(
    trained: Path, tiny_llama_dir: Path, in_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(training, "_train", lambda *args: calls.append(args[-1]) or args[-1])
    mtime = (trained / "sae_weights.safetensors").stat().st_mtime_ns
    assert train_sae(LAYER, str(tiny_llama_dir), **SMALL) == trained
    assert calls == []
    assert (trained / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    train_sae(LAYER, str(tiny_llama_dir), **SMALL, force=True)
    assert calls == [trained]


def test_other_settings_get_their_own_cache_dir(
    trained: Path, tiny_llama_dir: Path, in_home: Path
) -> None:
    model = str(tiny_llama_dir)
    assert training.sae_dir(LAYER, model, SAESettings(**SMALL)) == trained
    assert training.sae_dir(LAYER, model, SAESettings(**SMALL, seed=1)) != trained


def test_a_failed_run_leaves_no_sae_and_no_staging_dir(
    trained: Path, tiny_llama_dir: Path, in_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_run_sae_lens", killed)
    out = in_home / "never"
    with pytest.raises(KeyboardInterrupt):
        train_sae(LAYER, str(tiny_llama_dir), out=out, **SMALL)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".never")] == []


def test_sae_clamp_artifact_with_the_trained_sae_attaches_and_edits(
    trained: Path, tiny: torch.nn.Module, tiny_llama_dir: Path
) -> None:
    site = Site("resid_post", LAYER)
    sae = SAE.load_from_disk(str(trained))
    params = {"feature": 5, "strength": 10.0, "mode": "delta", "sae_path": str(trained)}
    ids = AutoTokenizer.from_pretrained(tiny_llama_dir)("A calm day.", return_tensors="pt")
    with (
        attached(tiny, make_artifact(tiny, "sae_clamp", site, params)) as switch,
        recording(tiny, site) as seen,
        torch.no_grad(),
    ):
        tiny(**ids)
        with switch.set(False):
            tiny(**ids)
    edited, plain = seen
    codes = sae.encode(plain)
    expected = plain + (10.0 - codes[..., 5, None]) * sae.W_dec[5]
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-4)


def test_cli_prints_the_report_and_path_of_an_existing_sae(trained: Path) -> None:
    args = ["train-sae", "--layer", str(LAYER), "--out", str(trained)]
    result = CliRunner().invoke(app, args, terminal_width=300)
    assert result.exit_code == 0, result.output
    assert f"{load_report(trained)['explained_variance']:.3f}" in result.output
    assert str(trained) in result.output.replace("\n", "")  # rich wraps long paths


def test_cli_help_states_the_library_defaults() -> None:
    from ce_bench.cli import reports as cli

    options = inspect.signature(cli.train_sae_cmd).parameters
    for name in ("tokens", "d_sae", "k", "seed"):
        assert f"default {getattr(SAESettings, name)}." in options[name].default.help, name
