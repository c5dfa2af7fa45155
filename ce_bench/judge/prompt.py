"""The pairwise emotion-rating prompt of Unified Concept Editing Appendix A.5, and the parser for
its replies.

The judge sees two sentences and rates the degree of one emotion in each, 0-10. The text below
keeps the appendix's wording (its grammar included) so scores stay comparable with the paper;
only the quoted "emotion" becomes the target emotion. Change the text and you must bump
PROMPT_VERSION: it is part of every cache key, so old replies are never reused for a new prompt.
"""

from __future__ import annotations

import re

PROMPT_VERSION = "seed000-A.5/v1"

# Unified Concept Editing Appendix A.5, verbatim except that "emotion" is the target emotion in the
# two places where the appendix means the emotion being rated.
_TEMPLATE = """\
You're a good assistant at evaluating the emotion of a text.

Now you have two sentences, you are asked to assess the degree of "{emotion}" in both sentences. \
Each sentences receives an overall score on a scale of 0 to 10, where a higher score indicates \
higher the level of {emotion}.

[The Start of Sentences 1]

{first}

[The End of Sentences 1]

[The Start of Sentences 2]

{second}

[The End of Sentences 2]

First, provide a comprehensive explanation of your evaluation, avoiding any potential bias and \
ensuring that the order in which the responses were presented does not affect your judgment.

Then, give a overall score on a scale of 0 to 10 for the two answers, and this score is an integer.

Output with the following format:

Evaluation evidence: <evaluation explanation here>

The overall score of Sentence 1: <score>

The overall score of Sentence 2: <score>"""

MAX_SCORE = 10

# One score line of the A.5 output format. Tolerated: any case, extra spaces, markdown bold or
# italics around the label or the number, a trailing period. Anything else on the line (such as
# "7/10", "7.5" or "is 7") makes it not a score line.
_SCORE_LINE = re.compile(
    r"[*_\s]*the\s+overall\s+score\s+of\s+sentence\s*([12])[*_\s]*:[*_\s]*(\d+)[*_\s]*\.?[*_\s]*",
    re.IGNORECASE,
)


class JudgeParseError(ValueError):
    """A judge reply that does not give exactly one integer 0-10 for each sentence."""


def build_prompt(emotion: str, first: str, second: str) -> str:
    """The A.5 prompt asking for the degree of `emotion` in `first` (Sentence 1) and `second`."""
    return _TEMPLATE.format(emotion=emotion, first=first, second=second)


def parse_scores(reply: str) -> tuple[int, int]:
    """(score of Sentence 1, score of Sentence 2) from a reply in the A.5 output format.

    Raises JudgeParseError when a score line is missing, a score is outside 0-10, or the same
    sentence gets two different scores (repeating the same line is accepted).

    Example:
        >>> parse_scores("Evaluation evidence: ...\\n**The overall score of Sentence 1:** 3\\n"
        ...              "The overall score of Sentence 2: 8.")
        (3, 8)
    """
    found: dict[str, set[int]] = {"1": set(), "2": set()}
    for line in reply.splitlines():
        match = _SCORE_LINE.fullmatch(line)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    scores = []
    for sentence, values in found.items():
        if not values:
            raise JudgeParseError(f"no score line for Sentence {sentence} in {_excerpt(reply)}")
        if len(values) > 1:
            raise JudgeParseError(
                f"conflicting scores {sorted(values)} for Sentence {sentence} in {_excerpt(reply)}"
            )
        (value,) = values
        if value > MAX_SCORE:
            raise JudgeParseError(f"score {value} for Sentence {sentence} is outside 0-{MAX_SCORE}")
        scores.append(value)
    return scores[0], scores[1]


def _excerpt(reply: str, limit: int = 200) -> str:
    text = reply if len(reply) <= limit else reply[:limit] + "..."
    return repr(text)
