"""The Judge: rows (question, reference, model answer) judged in both orders, through the cache, within the budget.

No Ray here (stages/judge.py runs it in an actor pool).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from raysel.backends.base import Generator, GenParams, make_generator
from raysel.config import JudgeConfig
from raysel.judge.clients import CallClient, FakeClient, JudgeError, JudgeUnavailable, OpenAIClient
from raysel.judge.ledger import Budget, JudgeCache, cache_key, price_of
from raysel.judge.prompt import (
    OrderResult,
    PairPrompt,
    RowVerdict,
    combine,
    max_prompt_tokens,
    pair_prompt,
    parse_verdict,
)


class Judge:
    """Judges rows (question, reference, model answer) in both orders, through the cache, within the budget.

    openai/fake: one thread per request in flight (at most judge.concurrency), parse failures re-asked
    judge.parse_retries times. local: all of a batch's prompts in one greedy generate() call, the verdict
    prefix pre-filled; not re-asked (greedy would repeat itself).
    """

    def __init__(
        self,
        cfg: JudgeConfig,
        cache_dir: str | Path,
        budget_usd: float | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.cfg = cfg
        self.price = price_of(cfg)
        if budget_usd is not None and self.price.source == "unknown":
            raise JudgeError(
                f"judge.budget_usd is set but the price of judge.model={cfg.model!r} is unknown: set "
                "judge.price_input_per_mtok and judge.price_output_per_mtok (USD per 1M tokens; 0 for a free endpoint)"
            )
        self.budget = Budget(budget_usd)
        self.cache = JudgeCache(cache_dir)
        self.generator: Generator | None = None
        self.client: CallClient | None = None
        if cfg.backend == "local":
            self.generator = generator or make_generator(cfg.local)
            loc = cfg.local
            self.identity = f"local|{loc.backend}|{loc.model}|{loc.dtype}|{loc.max_new_tokens}|{loc.max_prompt_tokens}"
        else:
            self.client = OpenAIClient(cfg) if cfg.backend == "openai" else FakeClient()
            self.identity = self.client.identity

    def judge_rows(
        self, questions: Sequence[str], references: Sequence[str], answers: Sequence[str]
    ) -> list[RowVerdict]:
        prompts = []
        for q, ref, ans in zip(questions, references, answers, strict=True):
            prompts += [pair_prompt(q, ref, ans), pair_prompt(q, ans, ref)]
        results = self.judge_prompts(prompts)
        return [combine(results[i], results[i + 1]) for i in range(0, len(results), 2)]

    def model_text(self, prompt: PairPrompt) -> str:
        """local: the exact text the judge model continues (chat template + pre-filled verdict prefix)."""
        assert self.generator is not None
        return self.generator.chat_prompt(prompt.user, prompt.system) + f"VERDICT {prompt.nonce}:"

    def judge_prompts(self, prompts: Sequence[PairPrompt]) -> list[OrderResult]:
        texts = [self.model_text(p) for p in prompts] if self.generator else [p.system + "\0" + p.user for p in prompts]
        keys = [cache_key(self.identity, t) for t in texts]
        results: list[OrderResult | None] = [None] * len(prompts)
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None:
                scores = tuple(hit["scores"]) if hit["scores"] is not None else None
                results[i] = OrderResult(scores=scores, reply=hit["reply"], cached=1)  # type: ignore[arg-type]
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            todo_prompts, todo_keys = [prompts[i] for i in todo], [keys[i] for i in todo]
            if self.generator is not None:
                fresh = self._run_local(todo_prompts, [texts[i] for i in todo], todo_keys)
            else:
                fresh = self._run_calls(todo_prompts, todo_keys)
            for i, res in zip(todo, fresh, strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _store(self, key: str, res: OrderResult) -> None:
        record = {
            "scores": list(res.scores) if res.scores else None,
            "reply": res.reply,
            "calls": res.calls,
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
            "cost_usd": res.cost,
        }
        self.cache.put(key, record)

    def _run_local(self, prompts: list[PairPrompt], texts: list[str], keys: list[str]) -> list[OrderResult]:
        assert self.generator is not None
        loc = self.cfg.local
        params = GenParams(max_new_tokens=loc.max_new_tokens, temperature=0.0, max_prompt_tokens=loc.max_prompt_tokens)
        out = []
        for prompt, key, gen in zip(prompts, keys, self.generator.generate(texts, params), strict=True):
            reply = f"VERDICT {prompt.nonce}:" + gen.text
            res = OrderResult(
                parse_verdict(reply, prompt.nonce),
                reply,
                calls=1,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.output_tokens,
            )
            self._store(key, res)
            out.append(res)
        return out

    def _run_calls(self, prompts: list[PairPrompt], keys: list[str]) -> list[OrderResult]:
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            futures = [pool.submit(self._judge_one, p, k, stop) for p, k in zip(prompts, keys, strict=True)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:  # stop the others quickly; what they finished is already cached
                stop.set()
                for f in futures:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def _judge_one(self, prompt: PairPrompt, key: str, stop: threading.Event) -> OrderResult:
        res = OrderResult()
        try:
            self._ask(prompt, stop, res)
        except BaseException:
            if res.cost:  # paid attempts of an order that then failed still count against the budget
                self.cache.put(None, {"cost_usd": res.cost})
            raise
        if not res.budget:
            self._store(key, res)
        elif res.cost:  # not judged (not cached), but paid for
            self.cache.put(None, {"cost_usd": res.cost})
        return res

    def _ask(self, prompt: PairPrompt, stop: threading.Event, res: OrderResult) -> None:
        """Ask until a verdict parses (1 + parse_retries calls), accumulating into `res`."""
        assert self.client is not None
        worst = self.price.cost(max_prompt_tokens(prompt), self.cfg.max_tokens)
        for _ in range(1 + self.cfg.parse_retries):
            if stop.is_set():
                raise JudgeUnavailable("stopped: another request of the batch failed")
            if not self.budget.reserve(worst):
                res.budget = True  # not judged, not cached: a resume with more budget judges it
                return
            spent = worst  # a call that raises, or reports no usage, counts as its worst case
            try:
                reply = self.client.call(prompt, stop)
                if reply.prompt_tokens is not None and reply.completion_tokens is not None:
                    spent = self.price.cost(reply.prompt_tokens, reply.completion_tokens)
            finally:
                self.budget.settle(worst, spent)
            res.calls += reply.requests
            res.prompt_tokens += reply.prompt_tokens or 0
            res.completion_tokens += reply.completion_tokens or 0
            res.cost += spent
            res.reply = reply.text
            res.scores = parse_verdict(reply.text, prompt.nonce)
            if res.scores is not None:
                return
