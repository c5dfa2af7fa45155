"""Lifelong editing: edit streams, the editors (MicroEdit, FT, GRACE, WISE), the session,
the metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from ce_bench.tasks.lifelong.task import exact_match
from lm_eval.api.instance import Instance

from ce_bench.artifacts import load_artifact, save_artifact
from ce_bench.embedded import load_model
from ce_bench.interventions import Switch, build_intervention
from ce_bench.interventions.sae import sink_positions
from ce_bench.lifelong import LifelongSession, StreamMismatch, load_stream, new_editor
from ce_bench.lifelong.editor import Editor, EditorParams, edit_batch
from ce_bench.lifelong.microedit import row_overlap
from ce_bench.lifelong.records import EditDataError, EditRecord, load_records, shipped_dir
from ce_bench.lifelong.wise import NO_EDIT, ties_merge
from ce_bench.models.edited_hf import EditedHFLM
from ce_bench.pairing import baseline_loglikelihood, for_edit, tag_of
from ce_bench.reports.lifelong import (
    LifelongReportConfig,
    change_text,
    parse_editor,
    run_lifelong_report,
    runs_dir,
    stream_grids,
)
from ce_bench.scoring import TokenScore, score_tokens
from ce_bench.sites import Site
from tests.helpers import lm_eval, results_of, samples_of

RECORD = EditRecord(
    prompt="What is the capital of Kenya?",
    target="Mombasa",
    rephrase="Which city is Kenya's capital?",
    loc_prompt="nq question: who wrote gulliver's travels",
    loc_answer="Jonathan Swift",
)


# ---------------------------------------------------------------------- records and streams
def test_shipped_sets_load_in_their_public_formats() -> None:
    zsre, hallucination = load_records("zsre"), load_records("selfcheckgpt")
    assert len(zsre) >= 100 and len(hallucination) >= 50
    assert zsre[0].loc_prompt.startswith("nq question: ") and zsre[0].rephrase
    assert hallucination[0].prompt.startswith("This is a Wikipedia passage about")
    assert hallucination[0].rephrase is None
    knowedit = load_records(str(shipped_dir() / "knowedit_zsre.json"))
    assert knowedit[0].loc_prompt and knowedit[0].rephrase and knowedit[0].ground_truth


def test_a_stream_is_the_first_t_records_and_its_digest_names_them(tmp_path) -> None:
    ten = load_stream("zsre", 10)
    assert ten.records == tuple(load_records("zsre")[:10])
    assert load_stream("zsre", 10).digest == ten.digest != load_stream("zsre", 9).digest
    lines = tmp_path / "edits.jsonl"  # JSON Lines works too
    raw = json.loads((shipped_dir() / "zsre.json").read_text())[:3]
    lines.write_text("\n".join(json.dumps(r) for r in raw))
    assert load_stream(str(lines)).records == tuple(load_records("zsre")[:3])


def test_bad_edit_files_name_the_file_record_and_field(tmp_path) -> None:
    with pytest.raises(EditDataError, match="holds only"):
        load_stream("zsre", 10_000)
    with pytest.raises(EditDataError, match="not a built-in set"):
        load_stream("no/such/file.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(EditDataError, match="match no supported format: MEND/WISE ZsRE"):
        load_stream(str(bad))
    raw = json.loads((shipped_dir() / "zsre.json").read_text())[:2]
    del raw[1]["loc_ans"]
    bad.write_text(json.dumps(raw))
    with pytest.raises(EditDataError, match="record 1: field 'loc_ans': missing"):
        load_stream(str(bad))


# ---------------------------------------------------------------------- metrics
def test_token_metrics_match_a_hand_computed_example() -> None:
    edited = TokenScore(logprob=-3.0, greedy=[5, 6, 9], target=[5, 6, 7])
    before = TokenScore(logprob=-1.0, greedy=[5, 8, 9], target=[5, 6, 7])
    assert edited.accuracy == pytest.approx(2 / 3)  # two of three target tokens are the argmax
    assert edited.agreement(before) == pytest.approx(2 / 3)  # one position changed its argmax
    assert edited.perplexity == pytest.approx(math.exp(1.0))  # exp(3 / 3)
    assert exact_match(" Mombasa, the port city\nmore", "Mombasa") == 1.0
    assert exact_match(" Mombasan", "Mombasa") == 0.0


def test_token_scores_read_only_the_continuation_positions() -> None:
    """The prompt's tokens are masked: only positions predicting the continuation count."""
    vocab = 10

    def forward(inputs: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        # each position predicts (its token + 1) mod vocab with log-probability log(0.5)
        logits = torch.full((*inputs.shape, vocab), -1e9)
        logits.scatter_(-1, ((inputs + 1) % vocab)[..., None], 0.0)
        logits.scatter_(-1, ((inputs + 2) % vocab)[..., None], 0.0)
        return logits

    (score,) = score_tokens([([1, 2, 3], [4, 5])], forward, 100, torch.device("cpu"))
    assert score.target == [4, 5] and score.greedy == [4, 5]
    assert score.logprob == pytest.approx(2 * math.log(0.5))  # the prompt's positions not counted
    assert score.perplexity == pytest.approx(2.0)


# ---------------------------------------------------------------------- editors on a tiny model
@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):  # type: ignore[no-untyped-def]
    return load_model(str(tiny_llama_dir), "cpu")


@pytest.fixture(scope="module")
def topk_sae_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=4))
    sae.cfg.metadata.hook_name = "model.layers.1"
    path = tmp_path_factory.mktemp("sae") / "topk"
    sae.save_model(path)
    return path


def _nll(model, tokenizer, record):  # type: ignore[no-untyped-def]
    from ce_bench.lifelong.editor import target_loss

    with torch.no_grad():
        return float(target_loss(model, edit_batch(tokenizer, record, torch.device("cpu")))[0])


def _one_edit(model, tokenizer, kind, params):  # type: ignore[no-untyped-def]
    """A new editor of `kind`, attached for one edit of RECORD: (editor, the edit's stats)."""
    editor = new_editor(kind, model, params)
    handles = editor.attach(model, Switch())
    try:
        return editor, editor.apply_edit(model, tokenizer, RECORD)
    finally:
        for h in handles:
            h.remove()


def test_microedit_moves_only_the_decoder_rows_the_edit_activates(tiny, topk_sae_dir) -> None:
    model, tokenizer = tiny
    editor = new_editor(
        "microedit", model, {"sae_path": str(topk_sae_dir), "reg_steps": 2, "edit_steps": 3}
    )
    switch = Switch()
    handles = editor.attach(model, switch)
    try:
        before = editor.tensors["w_dec"].clone()
        editor.apply_edit(model, tokenizer, RECORD)
        after = editor.tensors["w_dec"]
        batch = edit_batch(tokenizer, RECORD, torch.device("cpu"))
        with torch.no_grad():
            hidden = model(batch.input_ids, output_hidden_states=True).hidden_states[2]
        active = (editor.encode(hidden.float()) != 0).flatten(0, -2).any(0)
        moved = (after != before).any(-1)
        assert moved.any() and not (moved & ~active).any()  # Eq. 13-14: only I_k's rows
        assert editor.site.layer == 1 and editor.k == 4  # from the SAE's hook name and config
        z_hat = editor.decode(editor.encode(hidden.float()), after)
        report = editor.stream_report(model, tokenizer, [RECORD])
        ard = float(editor.ard(hidden, z_hat, ~sink_positions(hidden)))
        assert report["ard_at_end"] == [pytest.approx(ard, rel=1e-3)]
        assert report["within_tau_at_end"] == float(report["ard_at_end"][0] <= editor.tau)
        assert report["rows_per_edit"] == int(active.sum())
    finally:
        for h in handles:
            h.remove()


def test_microedit_continues_from_its_progress_with_the_rows_earlier_edits_moved(
    tiny, topk_sae_dir
) -> None:
    model, tokenizer = tiny
    params = {"sae_path": str(topk_sae_dir), "reg_steps": 2, "edit_steps": 2}
    first = new_editor("microedit", model, params)
    handles = first.attach(model, Switch())
    try:
        for record in (RECORD, RECORD):
            first.apply_edit(model, tokenizer, record)
    finally:
        for h in handles:
            h.remove()
    tensors, info = first.progress()
    second = new_editor("microedit", model, params)
    second.resume(tensors, info, 2)
    assert second.edits_applied == 2 and torch.equal(
        second.tensors["w_dec"], first.tensors["w_dec"]
    )
    assert torch.equal(torch.stack(second.rows_moved), torch.stack(first.rows_moved))


def test_row_overlap_is_the_mean_jaccard_share_over_pairs_of_edits() -> None:
    rows = [torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 0, 1])]
    found = row_overlap([r.bool() for r in rows])
    assert found == {"rows_per_edit": pytest.approx(5 / 3), "row_overlap": pytest.approx(1 / 9)}


def _streamed_microedit(model, tokenizer, sae_dir, **params):  # type: ignore[no-untyped-def]
    """A MicroEdit editor attached, its stream of one record started and applied; the report."""
    editor = new_editor("microedit", model, {"sae_path": str(sae_dir), "edit_steps": 1, **params})
    handles = editor.attach(model, Switch())
    try:
        editor.start_stream(model, tokenizer, [RECORD])
        editor.apply_edit(model, tokenizer, RECORD)
        return editor, editor.stream_report(model, tokenizer, [RECORD])
    finally:
        for h in handles:
            h.remove()


def test_microedit_calibrates_alpha_by_default_when_the_sae_is_not_one_of_the_papers(
    tiny, topk_sae_dir
) -> None:
    from ce_bench.lifelong.microedit import PAPER_ALPHA

    editor, report = _streamed_microedit(*tiny, topk_sae_dir, reg_steps=0)
    given, _ = _streamed_microedit(*tiny, topk_sae_dir, reg_steps=0, alpha="auto")
    assert editor.alpha == pytest.approx(given.alpha) and editor.alpha != PAPER_ALPHA
    assert report["alpha_from"].startswith("calibrated: the SAE is not one of MicroEdit's")


def test_microedit_uses_the_papers_alpha_with_the_papers_sae(
    tiny, topk_sae_dir, monkeypatch
) -> None:
    import ce_bench.lifelong.microedit as microedit

    monkeypatch.setattr(microedit, "PAPER_SAES", {(32, 64): "sae-llama-3-8b-32x"})
    editor, report = _streamed_microedit(*tiny, topk_sae_dir, reg_steps=0)
    assert editor.alpha == microedit.PAPER_ALPHA == 600
    assert report["alpha_from"] == "MicroEdit C.1 (sae-llama-3-8b-32x)"


def test_microedit_that_switches_no_edit_on_says_so(tiny, topk_sae_dir, caplog) -> None:
    _, report = _streamed_microedit(*tiny, topk_sae_dir, reg_steps=0, alpha=1e-9)
    assert report["within_tau_at_end"] == 0
    assert "MicroEdit changes nothing" in report["warning"]
    assert "MicroEdit changes nothing" in caplog.text


def test_microedit_routes_only_inputs_within_tau_through_the_sae(tiny, topk_sae_dir) -> None:
    model, tokenizer = tiny
    editor = new_editor("microedit", model, {"sae_path": str(topk_sae_dir)})
    ids = {
        name: torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        for name, text in (("in", RECORD.prompt), ("out", RECORD.loc_prompt))
    }
    with torch.no_grad():
        hidden = {k: model(v, output_hidden_states=True).hidden_states[2] for k, v in ids.items()}
    ard = {
        k: float(editor.ard(h, editor.decode(editor.encode(h), editor.tensors["w_dec"]), None))
        for k, h in hidden.items()
    }
    assert ard["in"] != ard["out"]
    switch = Switch()
    handles = editor.attach(model, switch)
    editor.tau = (ard["in"] + ard["out"]) / 2  # Eq. 12: one input below tau, one above
    below, above = ("in", "out") if ard["in"] < ard["out"] else ("out", "in")
    try:
        with torch.no_grad():
            with switch.set(False):
                plain = {k: model(v).logits for k, v in ids.items()}
            edited = {k: model(v).logits for k, v in ids.items()}
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(edited[above], plain[above], rtol=0, atol=0)  # passes unchanged
    assert not torch.allclose(edited[below], plain[below])  # reconstructed by the SAE


def test_grace_adds_expands_and_splits_keys_by_distance_and_label(tiny) -> None:
    model, _ = tiny
    editor = new_editor("grace", model, {"layer": 1, "eps": 1.0})
    query = torch.zeros(48)
    assert editor._update_codebook(query, label=1) == 0  # empty codebook: a new key
    far = query.clone()
    far[0] = 3.0  # 3 > eps_init + eps_0 = 2
    assert editor._update_codebook(far, label=1) == 1
    near = query.clone()
    near[0] = 1.5  # within 2 of key 0, same label: key 0 covers it
    assert editor._update_codebook(near, label=1) == 0
    assert float(editor.tensors["eps"][0]) == pytest.approx(1.5)
    clash = far.clone()
    clash[1] = 1.0  # distance 1 from key 1, another label: split
    assert editor._update_codebook(clash, label=2) == 2
    assert editor.tensors["eps"][[1, 2]].tolist() == pytest.approx([0.5 - 1e-5, 0.5])
    assert editor.tensors["keys"].shape == (3, 48)


def test_grace_replaces_the_output_only_within_the_radius(tiny) -> None:
    model, tokenizer = tiny
    editor = new_editor("grace", model, {"layer": 1, "steps": 3})
    switch = Switch()
    handles = editor.attach(model, switch)
    try:
        editor.apply_edit(model, tokenizer, RECORD)
        assert len(editor.tensors["keys"]) == 1
        edited_row = edit_batch(tokenizer, RECORD, torch.device("cpu"))
        other = edit_batch(tokenizer, EditRecord("Who painted the Mona Lisa?", "x", "", ""), "cpu")
        with torch.no_grad(), switch.scoring(edited_row.last_prompt):
            hit = model(edited_row.input_ids).logits
            with switch.set(False):
                miss_hit = model(edited_row.input_ids).logits
        editor.tensors["eps"][0] = -1.0  # no query is within a negative radius
        with torch.no_grad(), switch.scoring(edited_row.last_prompt):
            outside = model(edited_row.input_ids).logits
        with torch.no_grad(), switch.scoring(other.last_prompt):
            other_on = model(other.input_ids).logits
            with switch.set(False):
                other_off = model(other.input_ids).logits
    finally:
        for h in handles:
            h.remove()
    assert not torch.allclose(hit, miss_hit)
    torch.testing.assert_close(outside, miss_hit, rtol=0, atol=0)
    torch.testing.assert_close(other_on, other_off, rtol=0, atol=0)


def test_grace_with_easyedits_query_misses_every_record_of_a_stream_but_the_last(tiny) -> None:
    """query=last_edit reads every input where the last edit's prompt ended (EasyEdit's
    forward-pass scoring); the default reads each input at its own last prompt token."""
    model, tokenizer = tiny
    other = EditRecord("Who painted the famous portrait of the Mona Lisa?", "Leonardo", "", "")
    hits = {}
    for query in ("own", "last_edit"):
        editor = new_editor("grace", model, {"layer": 1, "steps": 1, "query": query})
        switch = Switch()
        handles = editor.attach(model, switch)
        try:
            editor.start_stream(model, tokenizer, [RECORD, other])
            for record in (RECORD, other):
                editor.apply_edit(model, tokenizer, record)
            editor.tensors["eps"][:] = 1e-3  # a hit only where the query is the key itself
            for record in (RECORD, other):
                row = edit_batch(tokenizer, record, torch.device("cpu"))
                with torch.no_grad(), switch.scoring(row.last_prompt):
                    on = model(row.input_ids).logits
                    with switch.set(False):
                        off = model(row.input_ids).logits
                hits[query, record.prompt] = not torch.equal(on, off)
        finally:
            for h in handles:
                h.remove()
    assert hits["own", RECORD.prompt] and hits["own", other.prompt]
    assert not hits["last_edit", RECORD.prompt] and hits["last_edit", other.prompt]


def test_ft_trains_until_the_target_is_greedy_and_switches_back_exactly(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    original = {k: v.clone() for k, v in model.state_dict().items()}
    editor = new_editor("ft", model, {"layer": 1, "lr": 1e-2, "ewc_lambda": 0.1})
    switch = Switch()
    handles = editor.attach(model, switch)
    try:
        before = _nll(model, tokenizer, RECORD)
        stats = editor.apply_edit(model, tokenizer, RECORD)
        assert stats["steps"] < 100 and _nll(model, tokenizer, RECORD) < before
        editor.apply_edit(model, tokenizer, RECORD)  # a second edit uses the EWC penalty
        with switch.set(False):
            assert _nll(model, tokenizer, RECORD) == pytest.approx(before)
        stream = load_stream("zsre", 1)
        saved = save_artifact(editor.to_artifact(model, "tiny", stream), tmp_path / "ft")
        edited_nll = _nll(model, tokenizer, RECORD)
    finally:
        for h in handles:
            h.remove()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, original[k], rtol=0, atol=0)  # detached: the original
    loaded = build_intervention(load_artifact(saved), model)
    handles = loaded.attach(model, Switch())
    try:
        assert _nll(model, tokenizer, RECORD) == pytest.approx(edited_nll, rel=1e-5)
    finally:
        for h in handles:
            h.remove()


def test_ties_merge_trims_elects_a_sign_and_averages_the_agreeing_entries() -> None:
    deltas = torch.tensor([[4.0, -1.0, 2.0, 0.5], [-3.0, -2.0, 1.0, 0.1]])
    # density 0.5 keeps [4, 0, 2, 0] and [-3, -2, 0, 0]; signs by sum: +, -, +, + (ties: +)
    merged = ties_merge(deltas, density=0.5)
    assert merged.tolist() == pytest.approx([4.0, -2.0, 2.0, 0.0])


def test_wise_trains_the_shard_mask_within_the_norm_constraint(tiny) -> None:
    model, tokenizer = tiny
    params = {"layer": 1, "steps": 3, "norm_constraint": 0.05}
    editor, stats = _one_edit(model, tokenizer, "wise", params)
    delta = editor.tensors["deltas"][-1]
    mask = editor._shard_mask(delta.shape).bool()
    assert 0.15 < float(mask.float().mean()) < 0.25  # mask_ratio 0.2
    assert float(delta[mask].abs().max()) == pytest.approx(0.05)  # clamped to W +- 0.05
    weight = model.model.layers[1].mlp.down_proj.weight
    # outside the mask only SGD's weight decay (1e-5 per step, as EasyEdit) moves an entry
    assert torch.all(delta[~mask].abs() <= 3.5e-5 * weight[~mask].abs() + 1e-8)  # 3 steps
    assert float(editor.tensors["min_act"][0]) == pytest.approx(stats["in_scope"])
    assert len(editor.templates) == 11  # "{}" and 10 generated contexts


def test_wise_reports_the_parts_of_its_final_loss(tiny) -> None:
    model, tokenizer = tiny
    _, stats = _one_edit(model, tokenizer, "wise", {"layer": 1, "steps": 2})
    assert stats["loss"] == pytest.approx(stats["nll"] + stats["margins"], rel=1e-5)
    # the margins are hinges (alpha 5, beta 20, gamma 10) of the scores reported beside them;
    # each hinge, a mean of positive parts, is at least the positive part of its mean
    edit, irr = stats["in_scope"], stats["irrelevant_score"]
    hinges = max(0.0, irr - 5.0) + max(0.0, 20.0 - edit) + max(0.0, irr - edit + 10.0)
    assert stats["margins"] >= hinges - 1e-5
    assert stats["margins"] > 0  # two steps cannot meet a margin of 20


def test_wise_scores_a_long_pass_by_its_top_token_only_at_inference(tiny) -> None:
    """EasyEdit's `euc`: an edit's threshold comes from mean scores whatever its rows' length;
    a top-1 threshold would route no shorter input (seen on the long hallucination records)."""
    model, _ = tiny
    editor = new_editor("wise", model, {"layer": 1})
    out = torch.zeros(1, 150, 8)
    side = torch.zeros(1, 150, 8)
    side[0, 0, 0] = 30.0  # one token far from W_down's output, the rest unchanged
    mask = torch.ones(1, 150, dtype=torch.bool)
    top = float(editor.scores(out, side, mask, inference=True)[0])
    mean = float(editor.scores(out, side, mask, inference=False)[0])
    assert top == pytest.approx(
        float(editor.act(torch.tensor(30.0)) - editor.act(torch.tensor(0.0)))
    )
    assert mean == pytest.approx(top / 150)
    short = float(editor.scores(out[:, :100], side[:, :100], mask[:, :100], inference=True)[0])
    assert short == pytest.approx(top / 100)  # 100 tokens or fewer: the mean at inference too
    # a row of 100 real tokens padded to 150 beside a longer row keeps its mean
    padded = mask.clone()
    padded[0, 100:] = False
    beside = editor.scores(
        out.repeat(2, 1, 1), side.repeat(2, 1, 1), torch.cat([padded, mask]), inference=True
    )
    assert beside.tolist() == pytest.approx([top / 100, top])


def test_wise_routes_a_row_to_a_side_memory_only_at_or_above_its_threshold(tiny) -> None:
    model, tokenizer = tiny
    editor = new_editor("wise", model, {"layer": 1})
    switch = Switch()
    handles = editor.attach(model, switch)
    editor.tensors["deltas"][0] = 0.5 * torch.randn_like(editor.tensors["deltas"][0])
    ids = edit_batch(tokenizer, RECORD, torch.device("cpu")).input_ids
    try:
        with torch.no_grad():
            with switch.set(False):
                off = model(ids).logits
            unedited = model(ids).logits  # min_act NO_EDIT: no memory holds an edit yet
            editor.tensors["min_act"][0] = 1e-6
            routed = model(ids).logits
            editor.tensors["min_act"][0] = 1e6
            below = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(unedited, off, rtol=0, atol=0)
    assert not torch.allclose(routed, off)
    torch.testing.assert_close(below, off, rtol=0, atol=0)


def test_wise_reports_where_the_router_sends_edit_and_locality_inputs(tiny) -> None:
    model, tokenizer = tiny
    editor, stats = _one_edit(model, tokenizer, "wise", {"layer": 1, "steps": 3})
    records = [RECORD, dataclasses.replace(RECORD, loc_prompt="The weather is", loc_answer="fine")]
    handles = editor.attach(model, Switch())
    try:
        report = editor.stream_report(model, tokenizer, records)
        editor.tensors["min_act"][0] = 1e-6  # every input reaches the memory
        low = editor.stream_report(model, tokenizer, records)
        editor.tensors["min_act"][0] = 1e6  # none does
        high = editor.stream_report(model, tokenizer, records)
    finally:
        for h in handles:
            h.remove()
    assert report["thresholds"] == [pytest.approx(0.88 * stats["in_scope"], abs=1e-3)]
    assert len(report["edit_scores"]) == len(report["loc_scores"]) == 2
    assert min(report["edit_scores"] + report["loc_scores"]) > 0
    assert low["edit_routed"] == low["loc_routed"] == 1.0
    assert high["edit_routed"] == high["loc_routed"] == 0.0
    # the score is the input's, whatever the threshold
    assert low["loc_scores"] == high["loc_scores"] == report["loc_scores"]


def test_wise_saves_a_shard_every_save_freq_edits_and_merges_every_merge_freq(tiny) -> None:
    model, tokenizer = tiny
    editor = new_editor("wise", model, {"layer": 1, "steps": 1, "save_freq": 1, "merge_freq": 2})
    handles = editor.attach(model, Switch())
    try:
        first_mask = editor._shard_mask((8, 8))
        first = editor.apply_edit(model, tokenizer, RECORD)["in_scope"]
        assert editor.tensors["deltas"].shape[0] == 2  # the first shard, frozen, and a fresh one
        assert editor.tensors["min_act"][1] == NO_EDIT
        assert not torch.equal(editor._shard_mask((8, 8)), first_mask)  # a new shard, a new mask
        second = editor.apply_edit(model, tokenizer, RECORD)["in_scope"]
    finally:
        for h in handles:
            h.remove()
    assert editor.tensors["deltas"].shape[0] == 2  # the two shards merged, and a fresh one
    assert float(editor.tensors["min_act"][0]) == pytest.approx(min(first, second))


def test_wise_state_saved_right_after_a_shard_is_frozen_loads_again(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    params = {"layer": 1, "steps": 1, "save_freq": 1, "merge_freq": 2}
    editor, _ = _one_edit(model, tokenizer, "wise", params)  # freezes the shard: a fresh memory
    path = save_artifact(editor.to_artifact(model, "tiny", load_stream("zsre", 1)), tmp_path / "w")
    loaded = build_intervention(load_artifact(path), model)
    assert torch.equal(loaded.tensors["min_act"], editor.tensors["min_act"].cpu())


# ---------------------------------------------------------------------- the session
def test_immediate_answers_each_record_right_after_its_own_edit(tiny) -> None:
    model, tokenizer = tiny
    editor = new_editor("grace", model, {"layer": 1, "steps": 1})
    handles = editor.attach(model, Switch())
    try:
        stream = load_stream("zsre", 3)
        session = LifelongSession(editor, stream, model, tokenizer, eval_at="immediate")
        assert editor.edits_applied == 3
        args = [for_edit(("q", " a"), i, stream.digest) for i in (2, 0, 1)]
        args += [baseline_loglikelihood(args[0]), ("side", " effect")]
        seen: list[tuple[str, int]] = []

        def compute(batch):  # type: ignore[no-untyped-def]
            seen.extend((str(r), editor.edits_applied) for r in batch)
            return [editor.edits_applied] * len(batch)

        answers = session.answer(args, [tag_of(a) for a in args], compute)
        assert answers == [3, 1, 2, 3, 3]  # record t after edit t; OFF and untagged at the end
        end = LifelongSession(editor, stream, model, tokenizer, eval_at="end")
        assert end.answer(args, [tag_of(a) for a in args], compute) == [3] * 5
        with pytest.raises(StreamMismatch, match="record 0 of edit stream"):
            session.check([tag_of(for_edit(("q", " a"), 0, load_stream("zsre", 4).digest))])
        with pytest.raises(StreamMismatch, match="record 3"):
            session.check([tag_of(for_edit(("q", " a"), 3, stream.digest))])
    finally:
        for h in handles:
            h.remove()


class Counting(Editor):
    """An editor whose state is the number of edits it applied (what the schedule tests see)."""

    kind, Params, tensor_names, site_name = "counting", EditorParams, ("count",), "resid_post"

    @classmethod
    def initial_tensors(cls, model, site, params):  # type: ignore[no-untyped-def]
        return {"count": torch.zeros(1)}

    def attach(self, model, switch):  # type: ignore[no-untyped-def]
        return []

    def apply_edit(self, model, tokenizer, record):  # type: ignore[no-untyped-def]
        self.tensors["count"] = self.tensors["count"] + 1
        return {}


def test_checkpoints_answer_each_request_after_its_checkpoints_edits_from_one_pass() -> None:
    editor = Counting(Site("resid_post", 0), EditorParams(), {"count": torch.zeros(1)})
    stream = load_stream("zsre", 4)
    passes = []
    session = LifelongSession(editor, stream, None, None, eval_at="1+2+4")
    session.apply_stream = lambda *a: passes.append(a)  # type: ignore[method-assign]
    args = [
        for_edit(("q", " a"), 0, stream.digest, checkpoint=1),
        for_edit(("q", " a"), 1, stream.digest, checkpoint=2),
        for_edit(("q", " a"), 0, stream.digest, checkpoint=2),
        for_edit(("q", " a"), 0, stream.digest, checkpoint=4),
        for_edit(("q", " a"), 3, stream.digest),
        ("side", " effect"),
    ]
    args.append(baseline_loglikelihood(args[0]))

    def compute(batch):  # type: ignore[no-untyped-def]
        return [int(editor.tensors["count"])] * len(batch)

    assert session.answer(args, [tag_of(a) for a in args], compute) == [1, 2, 2, 4, 4, 4, 4]
    assert int(editor.tensors["count"]) == 4 and not passes  # the end state back; no replay
    with pytest.raises(
        StreamMismatch, match="checkpoint 3, but the model.s schedule is eval_at=1.2.4"
    ):
        session.answer([args[0]], [tag_of(for_edit(("q", " a"), 0, stream.digest, 3))], compute)


@pytest.mark.parametrize(
    ("eval_at", "problem"),
    [
        ("2+1", "must increase"),
        ("0+3", "joined by"),
        ("10", "past the stream's 4"),
        ("soon", "end, immediate"),
    ],
)
def test_a_bad_checkpoint_schedule_is_refused(eval_at: str, problem: str) -> None:
    editor = Counting(Site("resid_post", 0), EditorParams(), {"count": torch.zeros(1)})
    with pytest.raises(ValueError, match=problem):
        LifelongSession(editor, load_stream("zsre", 4), None, None, eval_at=eval_at)


def test_a_saved_edited_state_loads_only_for_the_stream_it_edited(tiny_llama_dir, tmp_path) -> None:
    out = tmp_path / "grace"
    lm = EditedHFLM(
        pretrained=str(tiny_llama_dir),
        editor="grace",
        edits="zsre",
        num_edits=2,
        layer=1,
        steps=2,
        save_edits=str(out),
    )
    info = lm.get_model_info()["ce_bench"]["lifelong"]
    assert info["num_edits"] == 2 and info["eval_at"] == "end" and info["params"]["steps"] == 2
    doc_args = for_edit((RECORD.prompt, " Mombasa"), 0, load_stream("zsre", 2).digest)
    request = Instance("loglikelihood", {}, doc_args, 0)
    (fresh,) = lm.loglikelihood([request])
    lm.close()
    again = EditedHFLM(
        pretrained=str(tiny_llama_dir), intervention=str(out), edits="zsre", num_edits=2
    )
    assert again.loglikelihood([request]) == [fresh]  # the same edited model, not edited again
    again.close()
    with pytest.raises(StreamMismatch, match="saved state edited 'zsre' with num_edits=2"):
        EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(out), edits="zsre", num_edits=3)


@pytest.mark.slow
def test_lm_eval_runs_a_lifelong_edit_stream_end_to_end(tmp_path) -> None:
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", "editor=grace,edits=zsre,num_edits=5,steps=20,eval_at=1+3+5",
        "--tasks", "zsre_lifelong",
        "--output_path", str(tmp_path),
        "--log_samples",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path)
    metrics = results["results"]["zsre_lifelong"]
    samples = samples_of(tmp_path, "zsre_lifelong")
    for checkpoint in (1, 3):  # the mean over the records edited by then
        edited = [s[f"rel@{checkpoint}"] for s in samples if s["doc"]["edit_index"] < checkpoint]
        assert metrics[f"rel@{checkpoint},none"] == pytest.approx(sum(edited) / checkpoint)
    assert metrics["rel@5,none"] == metrics["rel,none"]  # the last checkpoint is the end
    assert metrics["rel,none"] > metrics["rel_base,none"]  # the edits took
    assert metrics["loc,none"] == pytest.approx(1.0)  # GRACE leaves unrelated prompts alone
    assert metrics["avg,none"] == pytest.approx(
        (metrics["rel,none"] + metrics["gen,none"] + metrics["loc,none"]) / 3
    )
    lifelong = results["config"]["ce_bench"]["lifelong"]
    assert lifelong["num_edits"] == 5 and lifelong["editor"] == "grace"
    mismatch = lm_eval(
        "--model", "edited_hf",
        "--model_args", "editor=grace,edits=zsre,num_edits=5,steps=1",
        "--tasks", "zsre_lifelong",
        "--metadata", json.dumps({"num_edits": 4}),
        cwd=tmp_path,
    )  # fmt: skip
    assert mismatch.returncode != 0 and "edited 'zsre' with num_edits=5" in mismatch.stderr


# ---------------------------------------------------------------------- the report
def test_report_editor_specs_are_checked_before_anything_runs() -> None:
    assert parse_editor("microedit:alpha=auto,tau=0.4") == (
        "microedit",
        {"alpha": "auto", "tau": 0.4},
    )
    with pytest.raises(ValueError, match="unknown editor 'romee'"):
        parse_editor("romee")
    with pytest.raises(ValueError, match="steps must be an integer"):
        parse_editor("grace:steps=0")
    with pytest.raises(ValueError, match="query must be one of own, last_edit"):
        parse_editor("grace:query=last")


def test_report_tables_what_an_editor_says_about_the_whole_stream() -> None:
    cells = [
        {"key": {"editor": "grace", "num_edits": 10}, "after_stream": {}},
        {
            "key": {"editor": "microedit:sae_path=/cache/saes/layer27-8c00", "num_edits": 10},
            "after_stream": {"within_tau_at_end": 0.3, "row_overlap": 0.35},
        },
        {
            "key": {"editor": "wise", "num_edits": 50},
            "after_stream": {"edit_routed": 1.0, "loc_routed": 0.25, "thresholds": [27.8]},
        },
    ]
    microedit, wise = stream_grids(cells)  # one table per editor; paths by their last part
    assert microedit.rows == [["microedit:sae_path=layer27-8c00", "10", "0.30", "0.35", "–"]]
    assert wise.rows == [["wise", "50", "1.00", "0.25"]]
    assert stream_grids(cells[:1]) == []


def test_report_with_a_mend_row_and_no_trained_mend_says_how_to_train_one(
    tiny_llama_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    config = LifelongReportConfig(
        model=str(tiny_llama_dir), editors=("grace", "mend"), out=tmp_path
    )
    with pytest.raises(ValueError, match="ce-bench train-mend --model"):
        run_lifelong_report(config)
    assert not (tmp_path / "results.json").exists()


def test_a_report_keeps_the_cells_another_report_wrote_to_its_folder_meanwhile(
    tmp_path, monkeypatch
) -> None:
    import ce_bench.reports.lifelong as report

    config = LifelongReportConfig(editors=("grace",), num_edits=(1,), out=tmp_path)
    other = {"key": {"editor": "wise", "num_edits": 50}, "metrics": {}}

    def run_cell(config, spec, num_edits):  # type: ignore[no-untyped-def]
        payload = {"config": {}, "cells": [other]}  # the other report finishes first
        (tmp_path / "results.json").write_text(json.dumps(payload))
        metrics = {"rel": 1.0, "gen": 1.0, "loc": 1.0, "avg": 1.0, "rel_base": 0.0, "gen_base": 0.0}
        return {"metrics": metrics, "edit_seconds": 1.0, "seconds": 2.0}

    monkeypatch.setattr(report, "_run_cell", run_cell)
    run_lifelong_report(config)
    saved = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [c["key"]["editor"] for c in saved] == ["wise", "grace"]


@pytest.mark.parametrize("killed", ["while the cell runs", "before the cell starts watching"])
def test_a_cell_worker_ends_when_the_report_that_started_it_is_killed(killed) -> None:
    """Else a killed report's cell edits on and writes the progress its restart writes too."""
    late = killed == "before the cell starts watching"  # (the worker still importing)
    worker = textwrap.dedent(f"""
        import os, sys, time
        from ce_bench.runtime import exit_with_parent
        report = int(sys.argv[1])
        print("ready", flush=True)
        while {late} and os.getppid() == report:
            time.sleep(0.01)
        exit_with_parent(report, poll_seconds=0.05)
        time.sleep(60)
    """)
    report = (
        "import os, subprocess, sys, time;"
        f" w = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())],"
        " stdout=subprocess.PIPE); w.stdout.readline(); print(w.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", report], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _running(pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Whether `pid` is alive (an ended process nobody reaped yet is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_report_writes_each_cell_and_does_not_rerun_finished_cells(
    tiny_llama_dir, tmp_path, monkeypatch
) -> None:
    config = LifelongReportConfig(
        model=str(tiny_llama_dir),
        editors=("grace:layer=1,steps=1",),
        num_edits=(1,),
        out=tmp_path,
    )
    (cell,) = run_lifelong_report(config)
    assert cell["key"]["num_edits"] == 1 and cell["params"]["steps"] == 1
    assert cell["peak_mb"] > 100  # measured in the cell's own process
    change = cell["paired"]["rel"]  # paired over the edited record
    metrics = cell["metrics"]
    assert change["delta"] == pytest.approx(metrics["rel"] - metrics["rel_base"])
    assert change["n"] == 1 and change_text(change).endswith("(1 record)")  # no interval
    assert change_text({**change, "n": 5, "ci": [-0.1, 0.3]}).endswith("[-0.10, +0.30]")
    collapsed = {"delta": 2.587e8, "ci": [4.2e7, 6.3e8], "n": 10}  # MEND's PPL after 10 edits
    assert change_text(collapsed) == "+2.59e+08 [+4.2e+07, +6.3e+08]"
    assert 0 <= cell["metrics"]["rel"] <= 1 and "rel_base" in cell["metrics"]
    progress = runs_dir(config, "grace:layer=1,steps=1", 1) / "progress"
    assert [p.name for p in progress.iterdir()] == ["after-1"]  # a cut-off cell continues here
    table = (tmp_path / "table.md").read_text()
    assert "| unedited |" in table and "| grace:layer=1,steps=1 |" in table
    assert "Change from the unedited model at T=1:" in table and "| editor | ΔRel. |" in table

    def must_not_run(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr("ce_bench.reports.lifelong._run_cell", must_not_run)
    assert run_lifelong_report(config) == [cell]
    # a finished MEND cell renders again without a trained network in $CE_BENCH_HOME
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path / "no-networks"))
    results = json.loads((tmp_path / "results.json").read_text())
    mend = {**cell, "key": {**cell["key"], "editor": "mend"}}
    results["cells"].append(mend)
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert run_lifelong_report(dataclasses.replace(config, editors=("mend",))) == [mend]
