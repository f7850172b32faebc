"""Offline demo corpus: instruction/response pairs built from the standard library's own docstrings."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import random
import re
import warnings
from pathlib import Path

MODULES = tuple(
    "base64 bisect collections copy csv datetime decimal difflib fractions functools hashlib heapq itertools"
    " json math operator os.path pathlib random re shutil statistics string textwrap typing".split()
)
"""Stdlib modules whose public functions and classes feed the corpus."""
MIN_CHARS, MAX_CHARS = 40, 900
"""Every output's length lies within these bounds (inclusive)."""
_MAX_DOC = 800  # room left for a signature line within MAX_CHARS
_SIG_LINE = re.compile(r"^[\w.]+\(.*\)(\s*-+>.*)?$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# (instruction, input, signature in output); {q} qualified name, {k} "function"/"class", {m} module.
_TEMPLATES = (
    ("Explain what `{q}` does in Python.", False, False),
    ("What is `{q}` used for?", False, False),
    ("Describe the Python {k} `{q}` and its parameters.", False, True),
    ("How do I use `{q}` from the `{m}` module?", False, True),
    ("Summarize the documentation of this Python {k}.", True, False),
    ("Write a short docstring for the following Python {k}.", True, False),
)


def _prose(paragraph: str) -> bool:
    """Tell whether a docstring paragraph is running text rather than code or a table.

    Args:
        paragraph: One blank-line-separated block of a cleaned docstring.

    Returns:
        True when no line is a doctest and the block does not start indented.
    """
    lines = paragraph.splitlines()
    doctest = any(line.lstrip().startswith(">>>") for line in lines)
    return bool(lines) and not lines[0].startswith(" ") and not doctest


def _clean_doc(doc: str | None) -> str | None:
    """Turn a raw docstring into a response: its first paragraph or two, whitespace collapsed.

    Args:
        doc: The object's ``__doc__`` (may be None).

    Returns:
        Text of MIN_CHARS to _MAX_DOC characters, or None when the docstring is unusable.
    """
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")) if p.strip()]
    while paragraphs and _SIG_LINE.match(" ".join(paragraphs[0].split())):
        paragraphs.pop(0)  # C docstrings often open with "name(args) -> result"
    if not paragraphs or not _prose(paragraphs[0]):
        return None
    text = " ".join(paragraphs[0].split())
    second = " ".join(paragraphs[1].split()) if len(paragraphs) > 1 and _prose(paragraphs[1]) else ""
    if len(text) < 250 and second and not second.endswith(":") and "__doc__" not in second:
        text += "\n\n" + second
    if len(text) > _MAX_DOC:
        cut = text.rfind(". ", 0, _MAX_DOC)
        text = text[: cut + 1] if cut >= 0 else ""
    return text if len(text) >= MIN_CHARS and not text.endswith(":") else None


def _signature(qualname: str, obj: object) -> str | None:
    """Render ``qualname(params)`` when the signature is known and stable across runs."""
    try:
        sig = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if _ADDRESS.search(sig) else qualname + sig


def _public(module: object) -> list[tuple[str, object]]:
    """List a module's public functions and classes as ``(attribute name, object)`` pairs."""
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    found = [(name, getattr(module, name, None)) for name in names]
    return [(name, obj) for name, obj in found if inspect.isroutine(obj) or inspect.isclass(obj)]


@functools.lru_cache(maxsize=1)
def _candidates() -> tuple[dict[str, str], ...]:
    """Collect usable stdlib objects, sorted by qualified name, one per distinct docstring.

    Returns:
        Records with keys ``name``, ``module``, ``kind``, ``doc`` and ``signature`` ("" if unknown).
    """
    pool = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in MODULES:
            for name, obj in _public(importlib.import_module(module_name)):
                pool.append((f"{module_name}.{name}", module_name, obj))
    records, seen_docs = [], set()
    for qualname, module_name, obj in sorted(pool, key=lambda item: item[0]):
        doc = _clean_doc(getattr(obj, "__doc__", None))
        if doc is None or doc in seen_docs:
            continue
        seen_docs.add(doc)
        kind = "class" if inspect.isclass(obj) else "function"
        sig = _signature(qualname, obj) or ""
        records.append({"name": qualname, "module": module_name, "kind": kind, "doc": doc, "signature": sig})
    return tuple(records)


def _pair(obj: dict[str, str], template: int, doc: str) -> dict[str, str]:
    """Fill one template for ``obj``, answering with ``doc`` (the object's own or another's)."""
    text, uses_input, with_sig = _TEMPLATES[template]
    instruction = text.format(q=obj["name"], k=obj["kind"], m=obj["module"])
    output = doc
    if with_sig and obj["signature"] and doc == obj["doc"]:
        with_signature = f"Signature: `{obj['signature']}`\n\n{doc}"
        output = with_signature if len(with_signature) <= MAX_CHARS else doc
    given = (obj["signature"] or obj["name"]) if uses_input else ""
    return {"instruction": instruction, "input": given, "output": output}


def build_corpus(
    n: int = 200, *, seed: int = 0, duplicate_rate: float = 0.05, mismatch_rate: float = 0.1
) -> list[dict[str, str]]:
    """Build a deterministic demo corpus of stdlib documentation pairs with injected defects.

    Args:
        n: Total number of rows.
        seed: Seed of the ``random.Random`` that drives every choice.
        duplicate_rate: Share of rows that are exact copies of clean rows (``round(n * rate)`` rows).
        mismatch_rate: Share of rows whose output documents an unrelated object.

    Returns:
        ``n`` rows with keys ``instruction``, ``input``, ``output`` and ``kind``
        ("clean", "duplicate" or "mismatched"), in a seed-determined order.

    Raises:
        ValueError: If the counts are negative, exceed ``n``, or need more clean rows than exist.
    """
    n_dup, n_mis = round(n * duplicate_rate), round(n * mismatch_rate)
    n_clean = n - n_dup - n_mis
    objs = list(_candidates())
    if n < 0 or n_dup < 0 or n_mis < 0 or n_clean < 0 or (n_dup and not n_clean):
        raise ValueError(f"cannot make {n} rows with {n_dup} duplicates and {n_mis} mismatched")
    if n_clean > len(objs) * len(_TEMPLATES):
        raise ValueError(f"at most {len(objs) * len(_TEMPLATES)} clean rows can be made, not {n_clean}")
    rng = random.Random(seed)
    order = rng.sample(objs, len(objs))
    base = [rng.randrange(len(_TEMPLATES)) for _ in order]
    rows = []
    for i in range(n_clean):  # a later round over the objects uses another template for each
        j, lap = i % len(order), i // len(order)
        rows.append({**_pair(order[j], (base[j] + lap) % len(_TEMPLATES), order[j]["doc"]), "kind": "clean"})
    rows += [{**rng.choice(rows[:n_clean]), "kind": "duplicate"} for _ in range(n_dup)]
    for _ in range(n_mis):
        asked = rng.choice(objs)
        other = rng.choice([o for o in objs if o["module"] != asked["module"]])
        rows.append({**_pair(asked, rng.randrange(len(_TEMPLATES)), other["doc"]), "kind": "mismatched"})
    rng.shuffle(rows)
    return rows


def write_corpus(path: str | os.PathLike[str], n: int = 200, *, seed: int = 0) -> dict[str, int]:
    """Write ``build_corpus(n, seed=seed)`` as JSONL (one UTF-8 JSON object per line).

    Args:
        path: Destination file; its parent directory is created if missing.
        n: Total number of rows.
        seed: Seed passed to :func:`build_corpus`.

    Returns:
        Counts ``{"rows", "clean", "duplicates", "mismatched"}`` of what was written.
    """
    rows = build_corpus(n, seed=seed)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    # Leave an identical file untouched: its unchanged mtime lets a rerun of the demo reuse finished steps.
    if not os.path.isfile(path) or Path(path).read_text(encoding="utf-8") != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    counts = {"rows": len(rows), "clean": 0, "duplicates": 0, "mismatched": 0}
    for row in rows:
        counts[{"clean": "clean", "duplicate": "duplicates", "mismatched": "mismatched"}[row["kind"]]] += 1
    return counts
