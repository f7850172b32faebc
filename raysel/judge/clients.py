"""The judge's call clients: an OpenAI-compatible endpoint with raysel's own retries, and a fake one.

Also the judge's errors (JudgeError, JudgeUnavailable), raised here and by the Judge.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from raysel.config import JudgeConfig
from raysel.judge.prompt import TAGS, PairPrompt, extract_blocks


class JudgeError(RuntimeError):
    """The judge cannot run as configured (missing key, rejected request); the message says what to fix."""


class JudgeUnavailable(JudgeError):
    """The endpoint kept failing (429 / 5xx / timeouts) after every retry; nothing was labelled."""


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int | None
    """None when the endpoint reported no usage (the call is then charged its worst case)."""
    completion_tokens: int | None
    requests: int
    """HTTP requests made, retries included."""


class CallClient(Protocol):
    identity: str

    def call(self, prompt: PairPrompt, stop: threading.Event) -> Reply: ...


def backoff_delay(cfg: JudgeConfig, attempt: int, seed: str) -> float:
    """backoff_s * 2^attempt capped at backoff_max_s, times a jitter in [0.5, 1) seeded by request and attempt."""
    base = min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt)
    return base * (0.5 + 0.5 * random.Random(f"{seed}:{attempt}").random())


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """Seconds the server asked to wait (retry-after-ms, retry-after seconds or HTTP date), capped."""
    try:
        if headers.get("retry-after-ms"):
            return min(cap, max(0.0, float(headers["retry-after-ms"]) / 1000))
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return min(cap, max(0.0, float(value)))
        except ValueError:
            return min(cap, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
    except (ValueError, TypeError):
        return None


class OpenAIClient:
    """Chat completions on an OpenAI-compatible endpoint, with raysel's own retries (the package's are off)."""

    def __init__(self, cfg: JudgeConfig) -> None:
        import openai

        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise JudgeError(
                f"judge.backend=openai reads the API key from the environment variable {cfg.api_key_env}, which is "
                "unset or empty: export it on every node (or set judge.api_key_env to the variable that holds it)"
            )
        self.cfg, self._openai, self._key = cfg, openai, key
        self.identity = f"openai|{cfg.model}|temperature={cfg.temperature}|max_tokens={cfg.max_tokens}"
        self._client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)
        self.endpoint = str(self._client.base_url).rstrip("/")

    def call(self, prompt: PairPrompt, stop: threading.Event) -> Reply:
        oa, cfg = self._openai, self.cfg
        failure = ""
        for attempt in range(cfg.max_retries + 1):
            delay, rejected = None, ""
            try:
                resp = self._client.chat.completions.create(
                    model=cfg.model,
                    messages=[{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
                    max_tokens=cfg.max_tokens,
                    temperature=cfg.temperature,
                )
                text = resp.choices[0].message.content or ""
                usage = getattr(resp, "usage", None)
                pt, ct = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (None, None)
                return Reply(text, pt, ct, attempt + 1)
            except oa.APIStatusError as exc:
                failure, delay = f"HTTP {exc.status_code}", retry_after(exc.response.headers, cfg.backoff_max_s)
                if exc.status_code not in (408, 429) and exc.status_code < 500:
                    rejected = self._rejected(exc)
            except oa.APITimeoutError:
                failure = f"no reply within judge.timeout_s={cfg.timeout_s:g}"
            except oa.APIConnectionError:
                failure = "connection failed"
            except (ValueError, TypeError, AttributeError, IndexError, oa.APIResponseValidationError) as exc:
                failure = f"malformed reply body ({type(exc).__name__})"
            if rejected:  # raised outside `except`: the endpoint's error, which may echo the key, is not chained
                raise JudgeError(rejected)
            if attempt < cfg.max_retries and stop.wait(
                backoff_delay(cfg, attempt, prompt.nonce) if delay is None else delay
            ):
                break  # another request of the batch failed for good
        raise JudgeUnavailable(
            f"judge endpoint {self.endpoint} (model {cfg.model!r}) failed {cfg.max_retries + 1} times for one "
            f"request, last: {failure}. Check that it is up and within its rate limits (or raise judge.max_retries, "
            "judge.backoff_max_s, judge.timeout_s), then rerun: judgements made so far are cached, not paid again."
        )

    def _rejected(self, exc: Any) -> str:
        hint = {
            401: f"check the API key in ${self.cfg.api_key_env}",
            403: f"check the API key in ${self.cfg.api_key_env} and its access to the model",
            404: "check judge.model and judge.base_url",
        }.get(exc.status_code, "check judge.model, judge.max_tokens and judge.temperature for this endpoint")
        detail = str(getattr(exc, "message", "") or "")[:300].replace(self._key, "[key]")
        return f"judge endpoint {self.endpoint} rejected the request: HTTP {exc.status_code} ({detail}); {hint}"


class FakeClient:
    """Deterministic judge for plumbing tests: an answer's score is a hash of its text, whatever its place."""

    identity = "fake"

    def call(self, prompt: PairPrompt, stop: threading.Event) -> Reply:
        blocks = extract_blocks(prompt.user, prompt.nonce)
        s1, s2 = (1 + int(hashlib.blake2b(blocks[t].encode(), digest_size=4).hexdigest(), 16) % 10 for t in TAGS[1:])
        text = f"VERDICT {prompt.nonce}: {s1} {s2}\nfake judge"
        return Reply(text, len(prompt.user.split()), len(text.split()), 1)
