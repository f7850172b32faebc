"""Column names and dtypes of raysel's instruction table: the only place column names are spelled."""

from __future__ import annotations

import hashlib
import unicodedata

import pyarrow as pa

ID = "id"
INSTRUCTION = "instruction"
INPUT = "input"
OUTPUT = "output"
SOURCE = "source"
"""Where the row came from: ``<file>:<line>`` (1-based line or record number)."""
MESSAGES = "messages"
"""Multi-turn rows keep the whole conversation as OpenAI-style JSON text; "" otherwise."""
RAW = "raw"
"""The original record as JSON text, so selected.jsonl can give back every original field."""
REJECT_REASON = "reject_reason"
"""Empty for good rows; otherwise why the row was set aside (it goes to rejected.jsonl)."""

LOSS_COND = "loss_cond"
LOSS_DIRECT = "loss_direct"
PPL_COND = "ppl_cond"
PPL_DIRECT = "ppl_direct"
SCORE_IFD = "score_ifd"
SCORE_IFD_PPL = "score_ifd_ppl"
"""exp(loss_cond) / exp(loss_direct): IFD's perplexity form, which Superfiltering and IterIT rank by."""
POSITION = "position"
"""A row's 0-based place among the rows a method scores (IterIT's rankings are orders of positions)."""
N_ANSWER_TOKENS = "n_answer_tokens"
PROMPT_TOKENS = "prompt_tokens"
EMBEDDING = "embedding"
"""float32 L2-normalized sentence vector (a fixed-size list column in Parquet)."""
PPL_TEXT = "ppl_text"
"""Perplexity of the embedded text under a causal-LM embedder (NaN for sentence encoders)."""
CLUSTER = "cluster"
"""K-Means cluster of the row (int32)."""
SELECTED = "selected"
RANK_IFD = "rank_ifd"
"""1-based rank by IFD among rows with IFD <= 1 (0 for the others)."""
SELECT_REASON = "select_reason"
"""Why a scored row was or was not selected (e.g. ``top_k``, ``ifd_above_1``, ``below_cutoff``)."""

CANONICAL = (ID, INSTRUCTION, INPUT, OUTPUT, SOURCE, MESSAGES, RAW, REJECT_REASON)

CANONICAL_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (INSTRUCTION, pa.string()),
        (INPUT, pa.string()),
        (OUTPUT, pa.string()),
        (SOURCE, pa.string()),
        (MESSAGES, pa.string()),
        (RAW, pa.string()),
        (REJECT_REASON, pa.string()),
    ]
)


def normalize_text(text: str) -> str:
    """Text as hashed for ids: Unicode NFC, Windows/Mac newlines as ``\\n``, outer whitespace stripped."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def row_id(instruction: str, input: str, output: str) -> str:
    """Stable content id: the same (instruction, input, output) gets the same id in every run.

    Duplicates collide on purpose. 16 bytes of BLAKE2b, hex: collisions are negligible at 10^9 rows.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (instruction, input, output):
        data = normalize_text(part).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


COMPACT_SCHEMA = pa.schema([(ID, pa.string()), (SOURCE, pa.string()), (REJECT_REASON, pa.string()), (RAW, pa.string())])
"""The ingest summary the driver keeps: no text but the raw record of rejected rows."""

SCORED_SCHEMA = pa.schema(
    [
        *CANONICAL_SCHEMA,
        *((name, pa.float32()) for name in (LOSS_COND, LOSS_DIRECT, SCORE_IFD, PPL_COND, PPL_DIRECT, SCORE_IFD_PPL)),
        (N_ANSWER_TOKENS, pa.int32()),
        (PROMPT_TOKENS, pa.int32()),
    ]
)
"""What the IFD score step writes: the canonical columns plus the scores (an empty step keeps this schema)."""

TEXT = (INSTRUCTION, INPUT, OUTPUT, MESSAGES, RAW)
"""The corpus's text columns. They stay in the workers: the driver's tables hold ids and scores."""

IFD_SCORES_SCHEMA = pa.schema([f for f in SCORED_SCHEMA if f.name not in TEXT])
"""What the IFD score step keeps: id, source, reject reason and the scores (the workers drop the text)."""

TEXTS_SCHEMA = pa.schema(
    [(POSITION, pa.int64()), *(f for f in CANONICAL_SCHEMA if f.name in (ID, SOURCE, INSTRUCTION, INPUT, OUTPUT, RAW))]
)
"""steps/texts.parquet: the text of the rows the outputs quote (selected, unscorable, the report's examples),
each with its position among the scored rows."""


def embedding_schema(dim: int) -> pa.Schema:
    """What an embed step writes: id, source, the vector, and the embedded text's perplexity."""
    return pa.schema(
        [(ID, pa.string()), (SOURCE, pa.string()), (EMBEDDING, pa.list_(pa.float32(), dim)), (PPL_TEXT, pa.float32())]
    )


# Generation (the target model's answers) and judging (IterSelectTune).
GENERATED = "generated"
"""The target model's answer to instruction (+ input)."""
GEN_PROMPT_TOKENS = "gen_prompt_tokens"
"""Tokens of the (chat-templated) generation prompt, after truncation to generate.max_prompt_tokens."""
GEN_TOKENS = "gen_tokens"
"""Tokens generated."""
GEN_FINISH = "gen_finish"
"""Why generation stopped: "stop" (end of turn), "length" (max_new_tokens), "truncated_prompt:stop" etc.
when the prompt was cut to fit."""
GENERATION_FIELDS = [
    (GENERATED, pa.string()), (GEN_PROMPT_TOKENS, pa.int32()), (GEN_TOKENS, pa.int32()), (GEN_FINISH, pa.string())
]  # fmt: skip
"""The columns a generate step adds to the rows it answers."""
JUDGE_VERDICT = "judge_verdict"
"""Both orders combined: "reference" (the reference answer wins: the instruction is hard), "model", "tie",
"unparsed" (no verdict could be read; raw replies in judge_raw) or "budget" (not judged: budget reached)."""
JUDGE_SCORE_REF = "judge_score_ref"
"""The reference answer's score, mean over the two orders (NaN when unparsed)."""
JUDGE_SCORE_MODEL = "judge_score_model"
"""The target model's answer's score, mean over the two orders (NaN when unparsed)."""
JUDGE_RAW = "judge_raw"
"""The judge's raw replies (JSON list, one per order) when a verdict could not be parsed; "" otherwise."""
JUDGE_CALLS = "judge_calls"
"""API / model calls made for this row in this run (0 when every judgement came from the cache)."""
JUDGE_CACHED = "judge_cached"
"""Judgements of this row served from the persistent cache."""
JUDGE_PROMPT_TOKENS = "judge_prompt_tokens"
JUDGE_COMPLETION_TOKENS = "judge_completion_tokens"
JUDGE_COST = "judge_cost_usd"
"""USD spent on this row's fresh calls (retries included)."""
SCORE_CLASSIFIER = "score_classifier"
"""P(hard | instruction + input) from the IterSelectTune classifier."""
SCORE_SIMILARITY = "score_similarity"
"""Mean cosine to the nearest rows of the hard set (IterSelectTune)."""
SCORE_IST = "score_ist"
"""alpha x score_classifier + (1 - alpha) x score_similarity: the rank a round takes its batch by."""
