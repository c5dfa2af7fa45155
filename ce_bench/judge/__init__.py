"""Judges for the emotion-editing metric of Unified Concept Editing (section 4.1, Appendix A.5).

A judge rates the degree of a target emotion in an original and an edited generation of the same
prompt, 0-10 each, once with the original shown first and once with the edited one first; each
sentence's score is the mean of its two scores. A failed request or an unparseable reply is
recorded on the verdict (`failure`) and never becomes a score.

Backends (registered by name):
    openai   any OpenAI-compatible chat API (OpenAI, vLLM, `transformers serve`); cached on disk.
    lexicon  offline proxy from the NRC emotion lexicon; deterministic; `usage()["proxy"]` is true.

Options. In lm-eval `--metadata` or model_args they are written `judge=<backend>` and
`judge_<option>=<value>` (read by `judge_from_metadata`); `make_judge` takes them without the
prefix. Unknown options are an error.
    concurrency   (all)     pairs judged at once by `compare_many` [8]
    model         (openai)  judge model name, part of the cache key [gpt-4o]
    base_url      (openai)  API root, e.g. http://127.0.0.1:8000/v1 [None = OpenAI]
    api_key_env   (openai)  variable holding the key; unneeded for a loopback base_url
                            [OPENAI_API_KEY]
    max_tokens    (openai)  reply length cap, at most 4096 [512]
    timeout       (openai)  seconds per request [60]
    max_attempts  (openai)  requests per item, retries included [6]
    backoff_base  (openai)  first retry waits about this many seconds, doubling [1.0]
    backoff_max   (openai)  longest wait between retries [60]
    cache_path    (openai)  sqlite reply cache [$CE_BENCH_HOME/judge_cache.sqlite]

Example:
    >>> judge = judge_from_metadata(
    ...     {"judge": "openai", "judge_base_url": "http://127.0.0.1:8000/v1", "judge_model": "m"},
    ...     default="openai",
    ... )
    >>> verdicts = judge.compare_many([PairItem("anger", original_text, edited_text)])
    >>> results["judge"] = judge.usage()
"""

from ce_bench.judge import lexicon_judge, openai_judge  # noqa: F401  (registers the backends)
from ce_bench.judge.base import Judge, PairItem, PairVerdict, Rating
from ce_bench.judge.prompt import PROMPT_VERSION, JudgeParseError, build_prompt, parse_scores
from ce_bench.judge.registry import JUDGES, judge_from_metadata, make_judge, register_judge

__all__ = [
    "JUDGES",
    "PROMPT_VERSION",
    "Judge",
    "JudgeParseError",
    "PairItem",
    "PairVerdict",
    "Rating",
    "build_prompt",
    "judge_from_metadata",
    "make_judge",
    "parse_scores",
    "register_judge",
]
