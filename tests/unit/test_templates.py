"""Unit tests for raysel.templates: the IFD paper's alpaca and wiz prompts, and the chat template hook."""

from __future__ import annotations

import pytest

from raysel.templates import DIRECT_PREFIX, build_prompt


def test_alpaca_without_input_is_the_papers_text() -> None:
    assert build_prompt("alpaca", "Name a color.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nName a color.\n\n### Response:"
    )


def test_alpaca_with_input_is_the_papers_text() -> None:
    assert build_prompt("alpaca", "Translate it.", "Bonjour") == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "Translate it.\n\n### Input:\nBonjour\n\n### Response:"
    )


def test_alpaca_placeholders_render_as_the_papers_templates() -> None:
    # PROMPT_DICT of the IFD code, placeholders and all.
    assert build_prompt("alpaca", "{instruction}", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:"
    )
    assert build_prompt("alpaca", "{instruction}", "{input}") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:"
    )
    assert build_prompt("wiz", "{instruction}", "{input}") == "{instruction}\nInput:{input}\n\n### Response:"


def test_alpaca_braces_in_text_are_not_format_fields() -> None:
    prompt = build_prompt("alpaca", "Fill {input} and {0}", "x = {'a': 1}")
    assert "### Instruction:\nFill {input} and {0}\n\n### Input:\nx = {'a': 1}\n\n" in prompt


def test_wiz_without_input() -> None:
    assert build_prompt("wiz", "Name a color.", "") == "Name a color.\n\n### Response:"


def test_wiz_with_input() -> None:
    assert build_prompt("wiz", "Translate it.", "Bonjour") == "Translate it.\nInput:Bonjour\n\n### Response:"


def test_direct_prefix() -> None:
    assert DIRECT_PREFIX == "### Response:"


def test_chat_uses_the_callable() -> None:
    seen: list[str] = []

    def chat(user: str) -> str:
        seen.append(user)
        return f"<user>{user}</user><assistant>"

    assert build_prompt("chat", "Name a color.", "", chat) == "<user>Name a color.</user><assistant>"
    assert build_prompt("chat", "Translate it.", "Bonjour", chat) == (
        "<user>Translate it.\n\nBonjour</user><assistant>"
    )
    assert seen == ["Name a color.", "Translate it.\n\nBonjour"]


def test_chat_without_callable_raises() -> None:
    with pytest.raises(ValueError, match="chat template"):
        build_prompt("chat", "Name a color.", "")


def test_unknown_template_raises() -> None:
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        build_prompt("vicuna", "x", "")  # type: ignore[arg-type]
