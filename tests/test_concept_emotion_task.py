"""The concept_emotion task: which prompts it asks, how it scores a pair, and a real lm_eval run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ce_bench.tasks.concept_emotion.task import Scored, load_docs, target_emotion, task_judge

from ce_bench.artifacts import save_artifact
from ce_bench.embedded import load_model
from ce_bench.judge import PairVerdict
from ce_bench.judge.cache import ReplyCache
from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
from tests.helpers import lm_eval, results_of

OK = PairVerdict((2, 6), (7, 3), original=2.5, edited=6.5, failure=None)
FAILED = PairVerdict((2, 6), None, original=None, edited=None, failure="parse")


def test_success_needs_a_higher_edited_score_and_a_sound_output() -> None:
    good = Scored(OK, repetitive=False, perplexity=12.0, max_ppl=200).metrics()
    assert (good["success_rate"], good["score_gain"], good["degenerate_rate"]) == (1.0, 4.0, 0.0)
    assert (good["original_shown_first"], good["edited_shown_second"]) == (2.0, 6.0)
    assert (good["edited_shown_first"], good["original_shown_second"]) == (7.0, 3.0)
    looping = Scored(OK, repetitive=True, perplexity=12.0, max_ppl=200).metrics()
    assert (looping["success_rate"], looping["degenerate_rate"]) == (0.0, 1.0)
    garbled = Scored(OK, repetitive=False, perplexity=900.0, max_ppl=200).metrics()
    assert (garbled["success_rate"], garbled["degenerate_rate"]) == (0.0, 1.0)
    empty = Scored(OK, repetitive=False, perplexity=math.nan, max_ppl=200).metrics()
    assert empty["degenerate_rate"] == 1.0


def test_the_judge_is_measured_by_order_agreement_and_position_bias() -> None:
    good = Scored(OK, repetitive=False, perplexity=12.0, max_ppl=200).metrics()
    # (2, 6) original first, (7, 3) edited first: both orders put the edited one above
    assert (good["order_agreement"], good["consistent_success_rate"]) == (1.0, 1.0)
    assert good["position_bias"] == ((2 - 3) + (7 - 6)) / 2
    torn = PairVerdict((5, 4), (6, 2), original=3.5, edited=5.0, failure=None)
    metrics = Scored(torn, repetitive=False, perplexity=12.0, max_ppl=200).metrics()
    assert metrics["success_rate"] == 1.0 and metrics["order_agreement"] == 0.0
    assert math.isnan(metrics["consistent_success_rate"])  # left out: the orders disagree
    assert metrics["position_bias"] == ((5 - 2) + (6 - 4)) / 2  # shown first scores 2.5 higher


def test_a_judge_failure_is_counted_and_never_scored() -> None:
    metrics = Scored(FAILED, repetitive=False, perplexity=5.0, max_ppl=200).metrics()
    assert metrics["judge_failures"] == 1.0
    assert math.isnan(metrics["success_rate"]) and math.isnan(metrics["score_gain"])
    assert math.isnan(metrics["edited_shown_first"]) and math.isnan(metrics["order_agreement"])


def test_target_emotion_comes_from_the_task_or_metadata_and_conflicts_are_errors() -> None:
    assert target_emotion({"task_emotion": "fear"}) == "fear"
    assert target_emotion({"emotion": "anger"}) == "anger"
    with pytest.raises(ValueError, match="measures 'fear' but --metadata asks for emotion='anger'"):
        target_emotion({"task_emotion": "fear", "emotion": "anger"})
    with pytest.raises(ValueError, match="target emotion None unknown"):
        target_emotion({})


def test_a_judge_that_cannot_be_built_names_the_offline_lexicon_judge(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"OPENAI_API_KEY.*\{\"judge\": \"lexicon\"\}"):
        task_judge({})
    with pytest.raises(ValueError, match="unknown judge 'gtp4'.*lexicon"):
        task_judge({"judge": "gtp4"})
    assert task_judge({"judge": "lexicon"}).name == "lexicon"


def test_prompts_come_from_the_other_emotions_in_turn_and_splits_do_not_overlap() -> None:
    test = load_docs(task_emotion="anger")["test"]
    assert "anger" not in set(test["source"])
    assert set(test["source"][:6]) == {
        "happiness",
        "sadness",
        "fear",
        "surprise",
        "disgust",
        "neutral",
    }
    validation = load_docs(task_emotion="anger", split="validation")["test"]
    assert not set(test["scenario"]) & set(validation["scenario"])
    assert len(set(test["split_hash"])) == 1 and test[0]["split_hash"] == EmotionData.load().hash
    every = load_docs(task_emotion="anger", prompt_emotions="all")["test"]
    assert "anger" in set(every["source"])


@pytest.fixture(scope="module")
def anger_sv(tmp_path_factory, embedded_dir) -> Path:  # type: ignore[no-untyped-def]
    model, tokenizer = load_model("smollm2-135m", "cpu")
    job = EmotionJob(model, tokenizer, "smollm2-135m", EmotionData.load(), "anger", 20, limit=2)
    return save_artifact(locate_emotion("steering", job), tmp_path_factory.mktemp("sv") / "sv")


def _run(tmp_path: Path, artifact: Path, metadata: dict, limit: int = 2) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"intervention={artifact},strength=8",
        "--tasks", "concept_emotion_target",
        "--limit", str(limit),
        "--gen_kwargs", "max_gen_toks=8",
        "--metadata", json.dumps(metadata),
        "--output_path", str(tmp_path),
        "--log_samples",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results_of(tmp_path)


@pytest.mark.slow
def test_lm_eval_run_pairs_generations_and_logs_all_four_judge_scores(tmp_path, anger_sv) -> None:
    results = _run(tmp_path, anger_sv, {"judge": "lexicon"})
    metrics = results["results"]["concept_emotion_target"]
    assert {"success_rate,none", "score_gain,none", "degenerate_rate,none"} <= set(metrics)
    assert metrics["judge_failures,none"] == 0
    config = results["configs"]["concept_emotion_target"]["metadata"]
    assert config["target_emotion"] == "anger"  # read from the artifact: no --metadata emotion
    assert config["split_hash"] == EmotionData.load().hash
    assert config["judge_usage"]["proxy"] is True and config["judge_usage"]["pairs"] == 2
    (samples,) = tmp_path.rglob("samples_concept_emotion_target_*.jsonl")
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        assert len(sample["filtered_resps"]) == 2  # original (OFF) and edited (ON)
        assert json.dumps(sample["arguments"]).count('"ce_bench_intervention": "off"') == 1
        for key in ("original_shown_first", "edited_shown_second", "edited_shown_first"):
            assert 0 <= sample[key] <= 10


@pytest.mark.slow
def test_served_judge_asks_both_orders_and_a_rerun_asks_only_for_unparsed_replies(
    tmp_path, anger_sv, served_model, embedded_dir
) -> None:
    metadata = {
        "judge": "openai",
        "judge_base_url": served_model,
        "judge_model": str(embedded_dir),
        "judge_max_tokens": 12,
        "judge_cache_path": str(tmp_path / "cache.sqlite"),
    }
    first = _run(tmp_path / "first", anger_sv, metadata, limit=3)
    usage = first["configs"]["concept_emotion_target"]["metadata"]["judge_usage"]
    pairs = 3
    assert usage["pairs"] == pairs and usage["calls"] + usage["cache_hits"] == 2 * pairs
    failures = first["results"]["concept_emotion_target"]["judge_failures,none"]
    assert failures == usage["failed_pairs"]  # unparseable replies counted, not scored
    cached = len(ReplyCache(tmp_path / "cache.sqlite"))  # only replies that parsed are kept
    again = _run(tmp_path / "again", anger_sv, metadata, limit=3)
    usage = again["configs"]["concept_emotion_target"]["metadata"]["judge_usage"]
    assert (usage["calls"], usage["cache_hits"]) == (2 * pairs - cached, cached)
    assert again["results"] == first["results"]  # a greedy judge answers the same again
