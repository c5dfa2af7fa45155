"""The `openai` judge: any OpenAI-compatible chat-completions API (OpenAI itself, vLLM,
`transformers serve`, ...) through the `openai` client.

Unified Concept Editing used GPT-4 as its judge (section 4.1); the default here is `gpt-4o`.
Requests are greedy (temperature 0) with a bounded reply length. Rate limits (429), server errors
(5xx), timeouts, dropped connections and a body that is not a chat completion (a proxy's HTML error
page served with status 200) are retried with exponential backoff and jitter, a bounded number of
times; any other error fails the item at once. The client's own retries are off so that every
request is counted here. The server, temperature and max_tokens are part of the reply cache key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ce_bench.judge.base import check_positive
from ce_bench.judge.cache import Completion, ReplySettings
from ce_bench.judge.llm import JudgeAPIError, LLMJudge, LLMJudgeOptions
from ce_bench.judge.registry import register_judge

logger = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
MAX_REPLY_TOKENS = 4096
TEMPERATURE = 0.0  # greedy: the reply is as repeatable as the server allows
INVALID_RESPONSE = "invalid response"
# Local servers ignore the key, but the client insists on having one.
LOCAL_DUMMY_KEY = "unused-local-key"


@dataclass(frozen=True)
class OpenAIJudgeOptions(LLMJudgeOptions):
    """Options of the `openai` judge.

    Args:
        model: judge model name (default gpt-4o).
        base_url: API root, e.g. http://127.0.0.1:8000/v1; None is OpenAI.
        api_key_env: environment variable holding the API key (unneeded for a loopback base_url).
        max_tokens: reply length cap; A.5 asks for an explanation before the scores, so not tiny.
        timeout: seconds per request.
        max_attempts: requests per item before it is a recorded failure (1 = no retry).
        backoff_base, backoff_max: the wait before retry n is about backoff_base * 2**(n-1)
            seconds, capped at backoff_max, jittered between half and all of that.
    """

    model: str = "gpt-4o"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 512
    timeout: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "max_tokens", "timeout", "max_attempts", "backoff_base", "backoff_max")
        if self.max_tokens > MAX_REPLY_TOKENS:
            raise ValueError(f"judge option max_tokens must be at most {MAX_REPLY_TOKENS}")


@register_judge
class OpenAIJudge(LLMJudge):
    """Asks an OpenAI-compatible chat model the A.5 question (Unified Concept Editing), with
    retries.

    Example:
        >>> judge = make_judge("openai", model="gpt-4o")            # key from $OPENAI_API_KEY
        >>> local = make_judge("openai", model="m", base_url="http://127.0.0.1:8000/v1")
    """

    name = "openai"
    Options = OpenAIJudgeOptions
    options: OpenAIJudgeOptions
    counters = (*LLMJudge.counters, "requests", "retries")

    def __init__(self, options: OpenAIJudgeOptions) -> None:
        from openai import OpenAI  # about 1 s to import: only when this judge is used

        api_key = _api_key(options)
        super().__init__(options)
        self.base_url = normalise_base_url(options.base_url)
        self._client = OpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=0,
            timeout=options.timeout,
        )
        self._jitter = random.Random()

    def reply_settings(self) -> ReplySettings:
        return {
            **super().reply_settings(),
            "base_url": self.base_url,
            "temperature": TEMPERATURE,
            "max_tokens": self.options.max_tokens,
        }

    def complete(self, prompt: str) -> Completion:
        import openai

        attempt = 0
        while True:
            attempt += 1
            self.count(requests=1)
            try:
                return _completion(
                    self._client.chat.completions.create(
                        model=self.options.model,
                        messages=[{"role": "user", "content": prompt}],
                        temperature=TEMPERATURE,
                        max_tokens=self.options.max_tokens,
                    )
                )
            # ValueError: a body that does not decode (JSONDecodeError) or is not a completion
            except (openai.APIError, ValueError) as err:
                reason, retryable, retry_after = _classify(err)
                if not retryable or attempt >= self.options.max_attempts:
                    logger.warning("judge request failed (%s) after %d attempt(s)", err, attempt)
                    raise JudgeAPIError(reason, str(err)) from err
            self.count(retries=1)
            time.sleep(self._backoff(attempt, retry_after))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt `attempt`: exponential with "equal jitter" (half
        fixed, half random, so parallel workers do not retry in lockstep); at least the server's
        Retry-After, within backoff_max."""
        step = min(self.options.backoff_max, self.options.backoff_base * 2 ** (attempt - 1))
        delay = step / 2 + self._jitter.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.options.backoff_max))
        return delay


def normalise_base_url(url: str | None) -> str:
    """The API root as the cache key knows it: None is OpenAI, scheme and host lower-case, no
    trailing slash, so `http://127.0.0.1:8000/v1/` and `http://127.0.0.1:8000/v1` share replies."""
    parts = urlsplit(url or OPENAI_URL)
    scheme, netloc, path = parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def _completion(response: Any) -> Completion:
    """The reply and usage in what the client made of a 200 body. It checks nothing: an HTML page
    comes back as a str, other JSON as a ChatCompletion with fields missing. So a body without a
    first choice whose content is text (or null) is a ValueError here; an empty reply is not, it
    fails to parse."""
    try:
        choices = response.choices
        if not isinstance(choices, list) or not choices:
            raise TypeError("no choices")
        reply = choices[0].message.content
        usage = response.usage
    except (AttributeError, TypeError) as err:
        raise ValueError(f"not a chat completion: {response!r:.200}") from err
    if reply is not None and not isinstance(reply, str):
        raise ValueError(f"not a chat completion: content {reply!r:.200}")
    return Completion(
        reply or "", _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens")
    )


def _tokens(usage: object, name: str) -> int:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) else 0


def _classify(err: Exception) -> tuple[str, bool, float | None]:
    """(reason, retryable, Retry-After seconds) for an error raised by the openai client or by
    `_completion`. An invalid body is retried like a 5xx: it is usually a proxy's passing error."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(err, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        retryable = status in (408, 429) or status >= 500
        return f"status {status}", retryable, _retry_after(err.response.headers.get("retry-after"))
    return INVALID_RESPONSE, True, None


def _retry_after(header: str | None) -> float | None:
    try:
        return float(header) if header is not None else None
    except ValueError:  # an HTTP date: rare, and the exponential backoff covers it
        return None


def _api_key(options: OpenAIJudgeOptions) -> str:
    """The key from `$api_key_env`; a dummy for a server on this machine; else a clear error."""
    key = os.environ.get(options.api_key_env)
    if key:
        return key
    if options.base_url is not None and _is_loopback(options.base_url):
        return LOCAL_DUMMY_KEY
    raise ValueError(
        f"the openai judge needs an API key for {options.base_url or OPENAI_URL}: set the "
        f"environment variable {options.api_key_env}, or name another one with "
        "judge_api_key_env=<VARIABLE>"
    )


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
