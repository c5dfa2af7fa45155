"""Side-effect tasks scored unedited and edited in one run: perplexity and MMLU."""

from __future__ import annotations

import pytest
import torch
from ce_bench.tasks.perplexity.task import HELD_OUT, load_docs, perplexity_delta, sections

from ce_bench.artifacts import save_artifact
from ce_bench.embedded import load_model
from ce_bench.sites import Site
from tests.helpers import lm_eval, make_artifact, results_of


def test_held_out_text_splits_into_titled_sections() -> None:
    parts = sections("= A =\n\nOne.\n\n= = Sub = =\n\nTwo.\n= B =\nThree.\n")
    assert parts == ["= A =\n\nOne.\n\n= = Sub = =\n\nTwo.\n", "= B =\nThree.\n"]
    docs = load_docs()["test"]
    assert len(docs) == 8 and all(d["text"].startswith("= ") for d in docs)
    assert "".join(docs["text"]).count("\n") <= HELD_OUT.read_text().count("\n")


def test_perplexity_delta_is_edited_minus_unedited_over_all_words() -> None:
    items = [(-10.0, -12.0, 5), (-20.0, -20.0, 5)]  # (base, edited loglikelihood, words)
    expected = torch.tensor(32.0 / 10).exp() - torch.tensor(30.0 / 10).exp()
    assert perplexity_delta(items) == pytest.approx(float(expected))


@pytest.mark.slow
def test_perplexity_and_mmlu_side_effects_come_base_and_edited_from_one_run(
    tmp_path, tiny_llama_dir
) -> None:
    model, _ = load_model(str(tiny_llama_dir), "cpu")
    torch.manual_seed(0)
    steer = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 8.0}, vector=torch.randn(32)
    )
    path = save_artifact(steer, tmp_path / "steer")
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"pretrained={tiny_llama_dir},intervention={path}",
        "--tasks", "ce_perplexity,ce_paired_mini_mmlu",
        "--limit", "2",
        "--output_path", str(tmp_path / "out"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path / "out")["results"]
    ppl = results["ce_perplexity"]
    edited, base = ppl["word_perplexity,none"], ppl["word_perplexity_base,none"]
    assert edited != base
    assert ppl["word_perplexity_delta,none"] == pytest.approx(edited - base)
    mmlu = results["ce_paired_mini_mmlu"]
    assert {"acc,none", "acc_base,none", "agree,none"} <= set(mmlu)
