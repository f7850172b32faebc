"""Prompt templates of the IFD paper's code (alpaca, wiz) and the model's own chat template."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Template = Literal["alpaca", "wiz", "chat"]

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
DIRECT_PREFIX = "### Response:"
"""The answer-alone text is DIRECT_PREFIX + output, whatever the template (as in the IFD code)."""


def build_prompt(template: Template, instruction: str, input: str, chat: Callable[[str], str] | None = None) -> str:
    """The text before the answer; the conditioned text is this + output.

    Args:
        template: "alpaca" (the paper's, with or without the Input block), "wiz" (instruction, optional
            "\\nInput:" block, then "\\n\\n### Response:"), or "chat" (the model's chat template around
            instruction, plus "\\n\\n" + input when there is one).
        instruction: The instruction.
        input: The optional context ("" for none).
        chat: For "chat": renders one user turn with the model's template (LossScorer.chat_prompt).
    """
    if template == "alpaca":
        if input == "":
            return ALPACA_NO_INPUT.format_map({"instruction": instruction})
        return ALPACA_WITH_INPUT.format_map({"instruction": instruction, "input": input})
    if template == "wiz":
        if input == "":
            return instruction + "\n\n" + DIRECT_PREFIX
        return instruction + "\nInput:" + input + "\n\n" + DIRECT_PREFIX
    if template == "chat":
        if chat is None:
            raise ValueError("template 'chat' needs the model's chat template (a scorer's chat_prompt)")
        return chat(instruction if input == "" else instruction + "\n\n" + input)
    raise ValueError(f"unknown template {template!r}: use alpaca, wiz or chat")
