"""IterSelectTune's pairwise judge: delimited prompt, verdict parsing, both orders, clients, cache and budget.

No Ray here (stages/judge.py runs it in an actor pool), and the stage may import nothing else. One contract ties
the pieces together: the nonce of a request delimits its content in the prompt, keys its verdict line for the
parser, and is part of the full prompt the cache key hashes.

prompt: the pairwise prompt, verdict parsing and the two orders combined; ledger: prices, the judgement cache,
the budget and the manifest's judge entry; clients: the OpenAI-compatible and fake call clients with their
retries, and the judge's errors; core: the Judge.
"""

from raysel.judge.clients import (
    CallClient,
    FakeClient,
    JudgeError,
    JudgeUnavailable,
    OpenAIClient,
    Reply,
    backoff_delay,
    retry_after,
)
from raysel.judge.core import Judge
from raysel.judge.ledger import (
    LIST_PRICES,
    Budget,
    BudgetReached,
    JudgeCache,
    Price,
    cache_key,
    cache_records,
    cache_spend,
    judge_accounting,
    price_of,
)
from raysel.judge.prompt import (
    SYSTEM,
    TAGS,
    OrderResult,
    PairPrompt,
    RowVerdict,
    combine,
    extract_blocks,
    max_prompt_tokens,
    neutralize,
    nonce_for,
    order_outcome,
    pair_prompt,
    parse_verdict,
    question_of,
    strip_blocks,
)

__all__ = [
    "LIST_PRICES",
    "SYSTEM",
    "TAGS",
    "Budget",
    "BudgetReached",
    "CallClient",
    "FakeClient",
    "Judge",
    "JudgeCache",
    "JudgeError",
    "JudgeUnavailable",
    "OpenAIClient",
    "OrderResult",
    "PairPrompt",
    "Price",
    "Reply",
    "RowVerdict",
    "backoff_delay",
    "cache_key",
    "cache_records",
    "cache_spend",
    "combine",
    "extract_blocks",
    "judge_accounting",
    "max_prompt_tokens",
    "neutralize",
    "nonce_for",
    "order_outcome",
    "pair_prompt",
    "parse_verdict",
    "price_of",
    "question_of",
    "retry_after",
    "strip_blocks",
]
