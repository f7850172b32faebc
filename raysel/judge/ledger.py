"""The judge's money and memory: prices, the judgement cache, the budget, and the manifest's judge entry."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysel import schema as S
from raysel.config import JudgeConfig

LIST_PRICES: dict[str, tuple[float, float]] = {
    # USD per 1M (prompt, completion) tokens. OpenAI list prices (2025), which change: check them and
    # override with judge.price_input_per_mtok / judge.price_output_per_mtok.
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    source: str
    """"config", "list" (LIST_PRICES), "unknown" (counted as 0) or "free" (local and fake judges)."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def price_of(cfg: JudgeConfig) -> Price:
    """Config prices, else the list price of the model or of the model its dated name extends, else unknown."""
    if cfg.backend != "openai":
        return Price(0.0, 0.0, "free")
    names = [k for k in LIST_PRICES if cfg.model == k or cfg.model.startswith(k + "-")]
    listed = LIST_PRICES[max(names, key=len)] if names else None
    if cfg.price_input_per_mtok is not None or cfg.price_output_per_mtok is not None:
        inp, out = listed or (0.0, 0.0)
        return Price(
            inp if cfg.price_input_per_mtok is None else cfg.price_input_per_mtok,
            out if cfg.price_output_per_mtok is None else cfg.price_output_per_mtok,
            "config",
        )
    return Price(*listed, "list") if listed else Price(0.0, 0.0, "unknown")


def cache_key(identity: str, *texts: str) -> str:
    return hashlib.sha256(json.dumps([identity, *texts], ensure_ascii=False).encode("utf-8")).hexdigest()


class JudgeCache:
    """Judgements keyed by hash(model identity, full prompt): a directory of JSONL files, one per writer
    process, each record appended and flushed; all files are read at start, a torn line skipped."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._records = {r["key"]: r for r in cache_records(self.dir) if r.get("key")}  # key None: spend only
        self._lock = threading.Lock()
        self._file: Any = None

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def put(self, key: str | None, record: dict[str, Any]) -> None:
        """Append a judgement (or, with key None, only the cost of calls whose judgement is not kept)."""
        record = {"key": key, **record}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:  # one file per writer: concurrent actors never interleave lines
                name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                self._file = (self.dir / name).open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            if key is not None:
                self._records[key] = record


def cache_records(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of every writer's file in a judge cache directory (a torn last line skipped)."""
    for path in sorted(Path(directory).glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the last line of a writer killed mid-record
                if isinstance(record, dict):
                    yield record


def cache_spend(directory: str | Path) -> float:
    """USD of every call recorded in a judge cache directory, by every writer (0 when there is none)."""
    return float(sum(r.get("cost_usd", 0.0) for r in cache_records(directory)))


class BudgetReached(RuntimeError):
    """The judge budget would be passed: the run stopped cleanly and resumes once judge.budget_usd is raised."""


class Budget:
    """USD this judge may spend. A call first reserves its worst-case cost; when that does not fit even with
    nothing in flight, the budget is exhausted for good and no further call is made."""

    def __init__(self, usd: float | None) -> None:
        self.limit = usd
        self.spent = 0.0
        self.exhausted = False
        self._reserved = 0.0
        self._cond = threading.Condition()

    def reserve(self, usd: float) -> bool:
        with self._cond:
            while True:
                if self.exhausted:
                    return False
                if self.limit is None or self.spent + self._reserved + usd <= self.limit:
                    self._reserved += usd
                    return True
                if self._reserved == 0:
                    self.exhausted = True
                    self._cond.notify_all()
                    return False
                self._cond.wait()  # calls in flight may cost less than reserved

    def settle(self, reserved: float, spent: float) -> None:
        with self._cond:
            self._reserved = max(0.0, self._reserved - reserved)
            self.spent += spent
            self._cond.notify_all()


def judge_accounting(cfg: JudgeConfig, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The manifest's judge entry from the stage's output columns: calls, tokens, cost, price, verdicts."""
    price = price_of(cfg)
    verdicts: dict[str, int] = {}
    for v in columns[S.JUDGE_VERDICT]:
        verdicts[str(v)] = verdicts.get(str(v), 0) + 1
    return {
        "backend": cfg.backend,
        "model": cfg.model if cfg.backend == "openai" else cfg.local.model if cfg.backend == "local" else "fake",
        "calls": int(sum(columns[S.JUDGE_CALLS])),
        "cached": int(sum(columns[S.JUDGE_CACHED])),
        "prompt_tokens": int(sum(columns[S.JUDGE_PROMPT_TOKENS])),
        "completion_tokens": int(sum(columns[S.JUDGE_COMPLETION_TOKENS])),
        "cost_usd": float(sum(columns[S.JUDGE_COST])),
        "price": {
            "input_per_mtok": price.input_per_mtok,
            "output_per_mtok": price.output_per_mtok,
            "source": price.source,
        },
        "verdicts": verdicts,
    }
