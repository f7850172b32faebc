"""Answer-span bookkeeping shared by the real scorers: whole-text tokenization, spans, chat turns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raysel.backends.base import TokenLoss


def answer_spans(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    max_answer_tokens,
    add_special_tokens: bool = True,
) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids of each whole text (truncated to max_length), where its answer starts, and where scoring ends.

    The answer starts at len(encode(prompt)), as the IFD code counts it (text[:text.rfind(output)] is the
    prompt, since the text ends with the output); at most max_answer_tokens[i] answer tokens are kept.
    add_special_tokens=False tokenizes as IterIT's code does (its chat texts carry their own BOS).
    """
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    # Truncate by hand, keeping the head: tokenizers differ in truncation_side (vLLM's cuts the left).
    ids = [row[:max_length] for row in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    # Token 0 has nothing before it to predict it: an empty prompt's answer is scored from token 1.
    starts = [max(1, len(x)) for x in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    ends = []
    for i, (row, start) in enumerate(zip(ids, starts, strict=True)):
        end = len(row) if max_answer_tokens is None else min(len(row), start + max(0, max_answer_tokens[i]))
        ends.append(max(end, start))
    return ids, starts, ends


def render_chat(tokenizer, user: str, system: str | None = None) -> str:
    """The tokenizer's chat template around one user turn, ending where the assistant's answer starts."""
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def render_messages(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The tokenizer's chat template over whole turns (no generation prompt): IterIT's scored texts."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False)


class TokenizerPrompts:
    """The prompt half of the Embedder, LossScorer and Generator protocols, from the engine's tokenizer
    (`self.tokenizer`): what every real backend shares."""

    tokenizer: Any

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return render_chat(self.tokenizer, user, system)

    def chat_text(self, messages: Sequence[dict[str, str]]) -> str:
        return render_messages(self.tokenizer, messages)

    def text_prompt(self, text: str) -> str:
        return text_prompt(self.tokenizer, text)


def token_losses(nll: Sequence[float], starts: Sequence[int], ends: Sequence[int]) -> list[TokenLoss]:
    return [
        TokenLoss(nll_sum=nll[i], n_tokens=max(0, ends[i] - starts[i]), prompt_tokens=starts[i])
        for i in range(len(nll))
    ]


def text_prompt(tokenizer, text: str) -> str:
    """`text` as a complete prompt: the special tokens the tokenizer adds in front (a BOS) spelled out, so that
    tokenizing it without added special tokens gives what training saw (sft tokenizes with them)."""
    probe = "x"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    # The tokens before the probe's own (a tokenizer may also add some after it, an EOS: not part of a prompt).
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    head = full[:start]
    return tokenizer.decode(head) + text if head else text
