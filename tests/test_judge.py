"""The judge: A.5 reply parsing (Unified Concept Editing), both-orders verdicts, retries, the reply
cache, the lexicon proxy, and a real OpenAI-compatible server (`transformers serve` of the embedded
model)."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ce_bench.judge import (
    PROMPT_VERSION,
    Judge,
    JudgeParseError,
    PairItem,
    PairVerdict,
    Rating,
    build_prompt,
    judge_from_metadata,
    make_judge,
    parse_scores,
    register_judge,
)
from ce_bench.judge.cache import Completion, ReplyCache, ReplyKey
from ce_bench.judge.lexicon_judge import lexicon_score
from ce_bench.judge.openai_judge import normalise_base_url

FAST_RETRY = {"backoff_base": 0.001, "backoff_max": 0.01}
CALM, FURIOUS = "I walked home and made tea.", "I was furious, I hated him and slammed the door."


# --- parsing the A.5 output format -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "scores"),
    [
        (
            "Evaluation evidence: the second is angrier.\n"
            "The overall score of Sentence 1: 2\nThe overall score of Sentence 2: 9",
            (2, 9),
        ),
        (
            "**The overall score of Sentence 1:** 0\n**The overall score of Sentence 2:** 10",
            (0, 10),
        ),
        (
            "**The overall score of Sentence 1: 4**\n__The overall score of Sentence 2__: *5*",
            (4, 5),
        ),
        ("the OVERALL score of sentence 1 :  7.\n  The overall score of Sentence 2:3.  ", (7, 3)),
        (
            "The overall score of Sentence 1: 6\nThe overall score of Sentence 2: 1\n"
            "The overall score of Sentence 1: 6",  # a repeated, agreeing line is fine
            (6, 1),
        ),
    ],
)
def test_parse_scores_reads_both_scores_in_the_a5_format(reply: str, scores: tuple[int, int]):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize(
    "reply",
    [
        "The overall score of Sentence 1: 3",  # Sentence 2 missing
        "The overall score of Sentence 1: 3\nThe overall score of Sentence 2: 11",  # out of range
        "The overall score of Sentence 1: 3\nThe overall score of Sentence 2: -1",
        "The overall score of Sentence 1: 3/10\nThe overall score of Sentence 2: 8/10",
        "The overall score of Sentence 1: 7.5\nThe overall score of Sentence 2: 8",
        "The overall score of Sentence 1 is 10.\nThe overall score of Sentence 2 is 2.",
        "The overall score of Sentence 1: seven\nThe overall score of Sentence 2: 8",
        "Sentence 1: 3, Sentence 2: 8",
        "The overall score of Sentence 1: 3\nThe overall score of Sentence 2: 8\n"
        "The overall score of Sentence 2: 5",  # conflicting duplicate
        "",
        "Hello there, welcome to my world!",
    ],
)
def test_parse_scores_rejects_anything_else(reply: str):
    with pytest.raises(JudgeParseError):
        parse_scores(reply)


def test_prompt_names_the_emotion_and_places_the_sentences_in_order():
    prompt = build_prompt("disgust", "FIRST TEXT", "SECOND TEXT")
    assert 'assess the degree of "disgust" in both sentences' in prompt
    assert "higher the level of disgust." in prompt
    assert prompt.index("FIRST TEXT") < prompt.index("SECOND TEXT")
    assert prompt.endswith("The overall score of Sentence 2: <score>")


# --- a scripted local OpenAI-compatible endpoint ------------------------------------------------

_SENTENCE = re.compile(r"\[The Start of Sentences [12]\]\n\n(.*?)\n\n\[The End of Sentences")


def biased_reply(prompt: str) -> str:
    """Scores 8 for a sentence with "furious" in it, else 2, plus 1 for being Sentence 1: a judge
    with a position bias, which averaging over both orders must cancel."""
    first, second = _SENTENCE.findall(prompt)
    s1 = (8 if "furious" in first else 2) + 1
    s2 = 8 if "furious" in second else 2
    return (
        "Evaluation evidence: scripted.\n"
        f"**The overall score of Sentence 1:** {s1}\nThe overall score of Sentence 2: {s2}."
    )


class ScriptedAPI:
    """A chat-completions endpoint on 127.0.0.1 whose responses follow `statuses` (one per
    request), then `then` for every later request; a 200 carries `reply(prompt)`, or the raw
    body `raw` = (content type, bytes) when given."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        then: int = 200,
        reply: Callable[[str], str] = biased_reply,
        delay: float = 0.0,
        raw: tuple[str, bytes] | None = None,
    ) -> None:
        self.statuses, self.then, self.reply, self.delay = list(statuses or []), then, reply, delay
        self.raw = raw
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _respond(self, body: dict[str, Any]) -> tuple[int, str, bytes]:
        prompt = body["messages"][0]["content"]
        with self._lock:
            self.prompts.append(prompt)
            status = self.statuses.pop(0) if self.statuses else self.then
        if status != 200:
            error = {"error": {"message": f"scripted {status}", "type": "scripted"}}
            return status, "application/json", json.dumps(error).encode()
        if self.raw is not None:
            return 200, *self.raw
        return 200, "application/json", json.dumps(self._completion(body["model"], prompt)).encode()

    def _completion(self, model: str, prompt: str) -> dict[str, Any]:
        return {
            "id": "scripted",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.reply(prompt)},
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(api.delay)
                status, content_type, data = api._respond(body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def scripted_judge(api: ScriptedAPI, cache: Path, **options: Any) -> Judge:
    return make_judge(
        "openai", model="scripted", base_url=api.url, cache_path=str(cache), **options
    )


# --- the openai backend: both orders, retries, failures ----------------------------------------


def test_verdict_averages_both_orders_which_cancels_position_bias(tmp_path: Path):
    with ScriptedAPI() as api:
        verdict = scripted_judge(api, tmp_path / "c.sqlite").compare("anger", CALM, FURIOUS)
    first, second = (_SENTENCE.findall(p) for p in api.prompts)
    assert first == [CALM, FURIOUS] and second == [FURIOUS, CALM]
    assert verdict.original_first == (3, 8) and verdict.edited_first == (9, 2)
    assert (verdict.original, verdict.edited, verdict.failure) == (2.5, 8.5, None)


def test_rate_limited_request_is_retried_with_backoff_until_it_succeeds(tmp_path: Path):
    with ScriptedAPI(statuses=[429, 429]) as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite", **FAST_RETRY)
        verdict = judge.compare("anger", CALM, FURIOUS)
    usage = judge.usage()
    assert verdict.ok and (verdict.original, verdict.edited) == (2.5, 8.5)
    assert (usage["requests"], usage["retries"], usage["calls"]) == (4, 2, 2)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (200, 40)
    assert usage["failures"] == {}


def test_server_errors_become_a_recorded_failure_after_the_last_attempt(tmp_path: Path):
    with ScriptedAPI(then=500) as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite", max_attempts=3, **FAST_RETRY)
        verdict = judge.compare("anger", CALM, FURIOUS)
    assert verdict.failure == "api: status 500"
    assert verdict.original is None and verdict.edited is None
    assert verdict.original_first is None and verdict.edited_first is None
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["calls"]) == (6, 4, 0)
    assert usage["failures"] == {"api: status 500": 2}
    assert (usage["pairs"], usage["failed_pairs"]) == (1, 1)


def test_client_error_is_not_retried(tmp_path: Path):
    with ScriptedAPI(then=400) as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite", **FAST_RETRY)
        verdict = judge.compare("anger", CALM, FURIOUS)
    assert verdict.failure == "api: status 400" and verdict.edited is None
    assert (judge.usage()["requests"], judge.usage()["retries"]) == (2, 0)


def test_timeouts_are_retried_then_recorded(tmp_path: Path):
    with ScriptedAPI(delay=1.0) as api:
        judge = scripted_judge(
            api, tmp_path / "c.sqlite", timeout=0.2, max_attempts=2, **FAST_RETRY
        )
        verdict = judge.compare("anger", CALM, FURIOUS)
    assert verdict.failure == "api: timeout"
    assert judge.usage()["failures"] == {"api: timeout": 2}


def closed_port() -> int:
    """A loopback port nobody listens on (its socket is closed on return)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_recorded_connection_failure(tmp_path: Path):
    judge = make_judge(
        "openai",
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        cache_path=str(tmp_path / "c.sqlite"),
        max_attempts=2,
        **FAST_RETRY,
    )
    verdict = judge.compare("fear", CALM, FURIOUS)
    assert verdict.failure == "api: connection" and verdict.original is None
    assert judge.usage()["requests"] == 4


def test_unparseable_reply_is_a_parse_failure_never_a_score(tmp_path: Path):
    with ScriptedAPI(reply=lambda prompt: "I think both are quite angry, maybe 7.") as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite")
        verdict = judge.compare("anger", CALM, FURIOUS)
    assert verdict.failure == "parse"
    assert (verdict.original, verdict.edited, verdict.original_first) == (None, None, None)
    assert judge.usage()["failures"] == {"parse": 2}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html>bad gateway</html>"),  # a proxy's error page
        ("application/json", b"<html>bad gateway</html>"),  # ... mislabelled as JSON
        ("application/json", b"[]"),  # JSON, but not a chat completion
    ],
)
def test_a_200_reply_that_is_not_a_chat_completion_is_retried_then_a_counted_failure(
    tmp_path: Path, content_type: str, body: bytes
):
    with ScriptedAPI(raw=(content_type, body)) as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite", max_attempts=3, **FAST_RETRY)
        rating = judge.rate("anger", CALM, FURIOUS)
        assert rating == Rating(None, "api: invalid response")
        assert len(api.prompts) == 3
        api.raw = None  # the proxy recovers: the run goes on and scores the next request
        assert judge.rate("anger", CALM, FURIOUS).scores == (3, 8)
    usage = judge.usage()
    assert (usage["requests"], usage["retries"], usage["calls"]) == (4, 2, 1)
    assert usage["failures"] == {"api: invalid response": 1}


def test_compare_many_returns_verdicts_in_item_order_under_concurrency(tmp_path: Path):
    items = [PairItem("anger", f"{CALM} ({i})", f"{FURIOUS} ({i})") for i in range(6)]
    items[2] = PairItem("anger", f"{FURIOUS} (swapped)", f"{CALM} (swapped)")
    with ScriptedAPI(delay=0.05) as api:
        judge = scripted_judge(api, tmp_path / "c.sqlite", concurrency=4)
        verdicts = judge.compare_many(items, progress=False)
    assert [(v.original, v.edited) for v in verdicts] == [(2.5, 8.5)] * 2 + [(8.5, 2.5)] + [
        (2.5, 8.5)
    ] * 3
    assert len(ReplyCache(tmp_path / "c.sqlite")) == 12


# --- the reply cache ----------------------------------------------------------------------------


def test_cached_replies_survive_a_new_judge_so_a_rerun_pays_nothing(tmp_path: Path):
    cache = tmp_path / "c.sqlite"
    with ScriptedAPI() as api:
        first = scripted_judge(api, cache)
        verdict = first.compare("anger", CALM, FURIOUS)
        # committed as they arrive: another connection sees them while the judge is alive
        assert len(ReplyCache(cache)) == 2
        again = scripted_judge(api, cache)
        assert again.compare("anger", CALM, FURIOUS) == verdict
    assert len(api.prompts) == 2
    usage = again.usage()
    assert (usage["calls"], usage["requests"], usage["cache_hits"]) == (0, 0, 2)


def test_cache_is_keyed_by_order_emotion_and_every_reply_setting(tmp_path: Path):
    settings = {"model": "gpt-4o", "prompt_version": PROMPT_VERSION, "max_tokens": 512}
    cache = ReplyCache(tmp_path / "c.sqlite")
    cache.put(ReplyKey(settings, "anger", CALM, FURIOUS), Completion("reply", 5, 3))
    reordered = dict(reversed(settings.items()))  # the order settings are listed in is no matter
    key = ReplyKey(reordered, "anger", CALM, FURIOUS)
    assert ReplyCache(tmp_path / "c.sqlite").get(key) == Completion("reply", 5, 3)
    for other in (
        ReplyKey(settings, "anger", FURIOUS, CALM),
        ReplyKey(settings, "fear", CALM, FURIOUS),
        ReplyKey({**settings, "model": "gpt-4o-mini"}, "anger", CALM, FURIOUS),
        ReplyKey({**settings, "prompt_version": "other"}, "anger", CALM, FURIOUS),
        ReplyKey({**settings, "max_tokens": 1024}, "anger", CALM, FURIOUS),
        ReplyKey({**settings, "base_url": "http://127.0.0.1:8000/v1"}, "anger", CALM, FURIOUS),
    ):
        assert cache.get(other) is None


def test_openai_judge_keys_replies_by_its_normalised_server_and_sampling(tmp_path: Path):
    def settings(base_url: str | None) -> Any:
        return make_judge(
            "openai", base_url=base_url, cache_path=str(tmp_path / "c.sqlite")
        ).reply_settings()

    local = settings("HTTP://LocalHost:8000/v1//")
    assert local["base_url"] == "http://localhost:8000/v1"
    assert local == settings("http://localhost:8000/v1")
    assert (local["temperature"], local["max_tokens"]) == (0.0, 512)
    assert local["model"] == "gpt-4o" and local["prompt_version"] == PROMPT_VERSION
    assert normalise_base_url(None) == "https://api.openai.com/v1"


@pytest.mark.parametrize("garbage", ["no scores here", ""])
def test_unparseable_or_empty_replies_are_not_cached_so_a_rerun_asks_again(
    tmp_path: Path, garbage: str
):
    cache = tmp_path / "c.sqlite"
    with ScriptedAPI(reply=lambda prompt: garbage) as api:
        assert scripted_judge(api, cache).compare("anger", CALM, FURIOUS).failure == "parse"
        api.reply = biased_reply  # the judge model answers in the A.5 format this time
        rerun = scripted_judge(api, cache)
        verdict = rerun.compare("anger", CALM, FURIOUS)
    assert verdict.ok and (verdict.original, verdict.edited) == (2.5, 8.5)
    assert len(api.prompts) == 4
    assert (rerun.usage()["calls"], rerun.usage()["cache_hits"]) == (2, 0)


def test_failed_requests_are_not_cached_so_a_rerun_asks_again(tmp_path: Path):
    cache = tmp_path / "c.sqlite"
    with ScriptedAPI(statuses=[503, 503]) as api:
        failed = scripted_judge(api, cache, max_attempts=1).compare("fear", CALM, FURIOUS)
        assert failed.failure == "api: status 503"
        assert scripted_judge(api, cache).compare("fear", CALM, FURIOUS).ok
    assert len(api.prompts) == 4


def test_cached_replies_are_served_only_to_the_server_that_gave_them(tmp_path: Path):
    cache = tmp_path / "c.sqlite"
    with ScriptedAPI() as api:
        url = api.url
        verdict = scripted_judge(api, cache).compare("anger", CALM, FURIOUS)
    # the same server, spelled with a trailing slash and an upper-case scheme: served, no request
    same = make_judge(
        "openai", model="scripted", base_url=url.upper()[:4] + url[4:] + "/", cache_path=str(cache)
    )
    assert same.compare("anger", CALM, FURIOUS) == verdict
    usage = same.usage()
    assert (usage["calls"], usage["requests"], usage["cache_hits"]) == (0, 0, 2)
    # another server (closed): it is asked, and its failure is recorded, never a cached score
    other = make_judge(
        "openai",
        model="scripted",
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        cache_path=str(cache),
        max_attempts=2,
        **FAST_RETRY,
    )
    failed = other.compare("anger", CALM, FURIOUS)
    assert failed.failure == "api: connection" and failed.original is None
    usage = other.usage()
    assert (usage["requests"], usage["cache_hits"]) == (4, 0)
    assert usage["failures"] == {"api: connection": 2}


def test_a_different_reply_length_cap_is_asked_again_not_served_from_the_cache(tmp_path: Path):
    cache = tmp_path / "c.sqlite"
    with ScriptedAPI() as api:
        scripted_judge(api, cache).compare("anger", CALM, FURIOUS)
        longer = scripted_judge(api, cache, max_tokens=1024)
        assert longer.compare("anger", CALM, FURIOUS).ok
    assert len(api.prompts) == 4 and longer.usage()["cache_hits"] == 0


def test_cache_file_of_the_old_schema_opens_but_its_replies_are_not_served(tmp_path: Path):
    """Caches written before the key named the server: their replies could be any server's."""
    cache = tmp_path / "c.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute(
            "CREATE TABLE replies (model TEXT NOT NULL, prompt_version TEXT NOT NULL, "
            "emotion TEXT NOT NULL, first TEXT NOT NULL, second TEXT NOT NULL, "
            "reply TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
            "completion_tokens INTEGER NOT NULL, "
            "created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, "
            "PRIMARY KEY (model, prompt_version, emotion, first, second))"
        )
        stale = "The overall score of Sentence 1: 0\nThe overall score of Sentence 2: 0"
        for first, second in ((CALM, FURIOUS), (FURIOUS, CALM)):
            db.execute(
                "INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, 1, 1, CURRENT_TIMESTAMP)",
                ("scripted", PROMPT_VERSION, "anger", first, second, stale),
            )
    db.close()
    with ScriptedAPI() as api:
        judge = scripted_judge(api, cache)
        verdict = judge.compare("anger", CALM, FURIOUS)
    assert (verdict.original, verdict.edited) == (2.5, 8.5)
    assert len(api.prompts) == 2 and judge.usage()["cache_hits"] == 0


# --- building judges from options ---------------------------------------------------------------


def test_options_from_metadata_strings_are_typed_and_unprefixed_keys_ignored(tmp_path: Path):
    judge = judge_from_metadata(
        {
            "judge": "openai",
            "judge_model": "m",
            "judge_base_url": "http://127.0.0.1:8000/v1",
            "judge_concurrency": "3",
            "judge_backoff_base": "0.5",
            "judge_cache_path": str(tmp_path / "c.sqlite"),
            "pretrained": "not-a-judge-option",
        },
        default="lexicon",
    )
    assert judge.name == "openai"
    assert (judge.options.concurrency, judge.options.backoff_base) == (3, 0.5)
    assert judge_from_metadata({}, default="lexicon").name == "lexicon"


def test_unknown_option_is_an_error_naming_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown option 'modle'.*known: .*model"):
        make_judge("openai", modle="gpt-4o")
    with pytest.raises(ValueError, match=r"unknown judge 'gpt'.*lexicon, openai"):
        make_judge("gpt")
    with pytest.raises(ValueError, match="max_tokens"):
        make_judge("openai", base_url="http://127.0.0.1:1/v1", max_tokens="0")
    with pytest.raises(ValueError, match="concurrency"):
        make_judge("lexicon", concurrency="many")


def test_missing_api_key_names_the_variable_unless_the_server_is_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_judge("openai")
    with pytest.raises(ValueError, match="MY_JUDGE_KEY"):
        make_judge("openai", base_url="https://judge.example/v1", api_key_env="MY_JUDGE_KEY")
    local = make_judge(
        "openai", base_url="http://localhost:8000/v1", cache_path=str(tmp_path / "c.sqlite")
    )
    assert local.usage()["base_url"] == "http://localhost:8000/v1"


def test_a_backend_name_can_be_registered_only_once():
    class Duplicate(Judge):
        name = "lexicon"

        def rate(self, emotion: str, first: str, second: str) -> Rating:
            return Rating((0, 0))

    with pytest.raises(ValueError, match="already registered"):
        register_judge(Duplicate)


# --- the lexicon proxy --------------------------------------------------------------------------


def test_lexicon_judge_scores_an_angry_sentence_above_a_neutral_one():
    verdict = make_judge("lexicon").compare("anger", CALM, FURIOUS)
    assert verdict.ok and verdict.edited > verdict.original
    assert verdict.original_first == verdict.edited_first[::-1]


def test_lexicon_judge_is_deterministic_and_says_it_is_a_proxy():
    items = [PairItem(emotion, CALM, FURIOUS) for emotion in ("anger", "fear", "disgust")]
    first = make_judge("lexicon").compare_many(items, progress=False)
    second = make_judge("lexicon").compare_many(items, progress=False)
    assert first == second
    assert make_judge("lexicon").usage()["proxy"] is True


def test_lexicon_finds_inflected_forms_and_rejects_unknown_emotions():
    assert lexicon_score("hated", "anger") == 10  # listed as "hate"
    assert lexicon_score("", "anger") == 0
    with pytest.raises(ValueError, match="happiness"):
        lexicon_score("I am glad", "love")


# --- a real OpenAI-compatible server: `transformers serve` of the embedded model ---------------

SERVED_ITEMS = [
    PairItem("anger", CALM, FURIOUS),
    PairItem("fear", "The sun rose over the quiet field.", "A scream echoed in the dark."),
]


@dataclass
class ServedRun:
    judge: Judge
    verdicts: list[PairVerdict]
    cache: Path


@pytest.fixture(scope="module")
def served_run(
    served_model: str, embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> ServedRun:
    """One judged run through the real server. The server only answers to the model name it was
    started with, so the judge model is the folder path."""
    cache = tmp_path_factory.mktemp("judge") / "c.sqlite"
    judge = make_judge(
        "openai",
        model=str(embedded_dir),
        base_url=served_model,
        max_tokens=12,
        timeout=120,
        cache_path=str(cache),
        concurrency=2,
    )
    return ServedRun(judge, judge.compare_many(SERVED_ITEMS, progress=False), cache)


@pytest.mark.slow
def test_served_judge_asks_in_both_orders_and_never_scores_unparseable_replies(
    served_run: ServedRun,
):
    judge, usage = served_run.judge, served_run.judge.usage()
    assert (usage["calls"], usage["requests"], usage["cache_hits"]) == (4, 4, 0)
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    cache = ReplyCache(served_run.cache)
    for item, verdict in zip(SERVED_ITEMS, served_run.verdicts, strict=True):
        orders = [(item.original, item.edited), (item.edited, item.original)]
        kept = [cache.get(ReplyKey(judge.reply_settings(), item.emotion, *o)) for o in orders]
        rated = [verdict.original_first, verdict.edited_first]
        # exactly the replies that gave scores are kept, each with the scores it gave
        assert [None if reply is None else parse_scores(reply.text) for reply in kept] == rated
        if None in rated:
            assert verdict.failure == "parse" and verdict.original is None
        else:
            assert verdict.ok and 0 <= verdict.edited <= 10
    unparseable = sum(rated.count(None) for rated in _ratings(served_run.verdicts))
    assert usage["failures"].get("parse", 0) == unparseable
    assert usage["failed_pairs"] == sum(not v.ok for v in served_run.verdicts)


@pytest.mark.slow
def test_served_judge_rerun_asks_again_only_for_replies_that_did_not_parse(
    served_run: ServedRun, served_model: str
):
    again = make_judge(
        "openai",
        model=served_run.judge.options.model,
        base_url=served_model + "/",
        max_tokens=12,
        cache_path=str(served_run.cache),
    )
    verdicts = again.compare_many(SERVED_ITEMS, progress=False)
    unparseable = sum(rated.count(None) for rated in _ratings(served_run.verdicts))
    usage = again.usage()
    assert (usage["calls"], usage["cache_hits"]) == (unparseable, 4 - unparseable)
    for before, after in zip(served_run.verdicts, verdicts, strict=True):
        if before.ok:  # served from the cache
            assert after == before


def _ratings(verdicts: list[PairVerdict]) -> list[list[tuple[int, int] | None]]:
    return [[v.original_first, v.edited_first] for v in verdicts]
