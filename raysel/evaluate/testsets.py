"""Readers for the pairwise test sets (Vicuna, Koala, WizardLM, Self-Instruct, LIMA) as distributed with the
IFD paper's evaluation code: one prompt per record, with a stable id, whatever each file calls its fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from raysel.readers import InputError

NAMES = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
"""The test sets, by the file names of ../shared/data/testsets/<name>.jsonl."""


@dataclass(frozen=True)
class Prompt:
    testset: str
    id: str
    """Stable within the test set (the file's own id, else the 1-based line number)."""
    instruction: str
    input: str = ""
    """Self-Instruct's instance input; empty for the others."""


def _vicuna(rec: dict) -> tuple[str, str, str]:
    return str(rec["question_id"]), rec["text"], ""


def _koala(rec: dict) -> tuple[str, str, str]:
    return str(rec["id"]), rec["prompt"], ""


def _wizardlm(rec: dict) -> tuple[str, str, str]:
    return str(rec["idx"]), rec["Instruction"], ""


def _sinstruct(rec: dict) -> tuple[str, str, str]:
    # The user-oriented set: each instruction has exactly one instance, whose input is the context (the
    # authors' generation script asserts the one instance).
    instances = rec["instances"]
    if not isinstance(instances, list) or len(instances) != 1:
        raise TypeError(f"'instances' (a list of exactly one {{input, output}}; this record has {instances!r:.60})")
    return str(rec["id"]), rec["instruction"], str(instances[0].get("input") or "")


def _lima(rec: dict) -> tuple[str, str, str]:
    conv = rec["conversations"]
    text = conv if isinstance(conv, str) else conv[0]  # the first turn is the prompt
    return "", text, ""


READERS = {"vicuna": _vicuna, "koala": _koala, "wizardlm": _wizardlm, "sinstruct": _sinstruct, "lima": _lima}


def read_testset(path: Path, name: str | None = None) -> list[Prompt]:
    """The prompts of one test set file (its format from `name`, default the file's stem).

    A record without the fields its format needs stops with the file, line and field, and what to do."""
    path = Path(path)
    name = (name or path.stem).lower()
    if name not in READERS:
        raise InputError(f"{path}: unknown test set {name!r}; known: {', '.join(NAMES)} (name the file after one)")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
                pid, instruction, context = READERS[name](rec)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            except (KeyError, IndexError, TypeError, AttributeError) as e:
                raise InputError(
                    f"{where}: a {name} record needs the field {e} (the formats are in ../shared/data/README.md)"
                ) from None
            if not isinstance(instruction, str) or not instruction.strip():
                raise InputError(f"{where}: empty prompt in the {name} test set; remove the line or fill it in")
            prompts.append(Prompt(testset=name, id=pid or str(line_no), instruction=instruction, input=context))
    if not prompts:
        raise InputError(f"{path}: the {name} test set has no prompt; fill it in or leave {name} out of --test-sets")
    return prompts


def read_testsets(directory: Path, names: list[str] | tuple[str, ...] = NAMES) -> dict[str, list[Prompt]]:
    """Each named test set from `directory/<name>.jsonl`."""
    out = {}
    for name in names:
        path = Path(directory) / f"{name}.jsonl"
        if not path.is_file():
            raise InputError(f"{path}: test set {name!r} not found; known test sets are {', '.join(NAMES)}")
        out[name] = read_testset(path, name)
    return out
