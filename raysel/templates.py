"""Prompt templates of the IFD paper's code (alpaca, wiz) and the model's own chat template."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Template = Literal["alpaca", "wiz", "chat", "iterit"]

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ITERIT_SYSTEM = "You are a helpful assistant."
"""The system turn of IterIT's chat texts (JiaQiSJTU/IterIT src/data_utils.py)."""
DIRECT_PREFIX = "### Response:"
"""The answer-alone text is DIRECT_PREFIX + output, whatever the template (as in the IFD code)."""


def iterit_user(instruction: str, input: str) -> str:
    """IterIT's user turn: the instruction, plus "\\nInput: " + input when there is one."""
    return instruction if input == "" else instruction + "\nInput: " + input


def build_prompt(template: Template, instruction: str, input: str, chat: Callable[..., str] | None = None) -> str:
    """The text before the answer; the conditioned text is this + output.

    Args:
        template: "alpaca" (the paper's, with or without the Input block), "wiz" (instruction, optional
            "\\nInput:" block, then "\\n\\n### Response:"), or "chat" (the model's chat template around
            instruction, plus "\\n\\n" + input when there is one), or "iterit" (the model's chat template
            with system ITERIT_SYSTEM and user iterit_user(), as IterIT's code renders it).
        instruction: The instruction.
        input: The optional context ("" for none).
        chat: For "chat" and "iterit": chat(user, system) renders one user turn with the model's template
            (LossScorer.chat_prompt).
    """
    if template == "alpaca":
        if input == "":
            return ALPACA_NO_INPUT.format_map({"instruction": instruction})
        return ALPACA_WITH_INPUT.format_map({"instruction": instruction, "input": input})
    if template == "wiz":
        if input == "":
            return instruction + "\n\n" + DIRECT_PREFIX
        return instruction + "\nInput:" + input + "\n\n" + DIRECT_PREFIX
    if template in ("chat", "iterit"):
        if chat is None:
            raise ValueError("template 'chat' needs the model's chat template (a scorer's chat_prompt)")
        if template == "iterit":
            return chat(iterit_user(instruction, input), ITERIT_SYSTEM)
        return chat(instruction if input == "" else instruction + "\n\n" + input)
    raise ValueError(f"unknown template {template!r}: use alpaca, wiz, chat or iterit")
