"""Is a generation degenerate? The repetition half of Unified Concept Editing A.8's quality check.

An edit pushed too hard makes a model repeat one word or phrase ("anger anger anger"); such an
output may well read as the target emotion to a judge, so the benchmark counts it as a failed
edit. The other half, a perplexity threshold under the unedited model, needs the model and is
computed by the task (`ce_bench.pairing.unedited_perplexity`).
"""

from __future__ import annotations

import re

MAX_RUN = 3  # the same token more than 3 times in a row
MIN_DISTINCT_TRIGRAMS = 0.5  # below half distinct word trigrams = looping
MIN_WORDS_FOR_TRIGRAMS = 8


def is_repetitive(text: str) -> bool:
    """True for an empty output, a token repeated more than MAX_RUN times in a row, or text
    whose word trigrams are mostly repeats."""
    tokens = re.findall(r"\w+|[^\w\s]", text.lower())
    if not tokens:
        return True
    run = 1
    for previous, current in zip(tokens, tokens[1:], strict=False):
        run = run + 1 if current == previous else 1
        if run > MAX_RUN:
            return True
    words = [t for t in tokens if t[0].isalnum()]
    if len(words) < MIN_WORDS_FOR_TRIGRAMS:
        return False
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(trigrams)) / len(trigrams) < MIN_DISTINCT_TRIGRAMS
