"""raysel eval's parts that need no Ray and no real model: EvalConfig checks, the `eval` command line, the
held-out split and training tables, the held-out loss, the prompts table, text_prompt and GenerateStage's
text templates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raysel import schema as S
from raysel.backends.spans import text_prompt
from raysel.cli import _eval_overrides, _parser, main
from raysel.config import ConfigError, EvalConfig, GenerateConfig, load_eval_config
from raysel.evaluate.run import (
    PROMPTS_SCHEMA,
    _heldout,
    _prompts_table,
    _training_tables,
    heldout_loss,
    pair_name,
)
from raysel.evaluate.testsets import Prompt
from raysel.readers import InputError
from raysel.stages.generate import GenerateStage
from raysel.templates import build_prompt

TWO_SETS = {"full": "a.json", "sel": "b.json"}
THREE_SETS = {"full": "a.json", "sel": "b.json", "rand": "random:sel"}
THREE_SETS_ARGS = ("full=a.json", "sel=b.json", "rand=random:sel")


def _cfg(**overrides) -> EvalConfig:
    """A valid EvalConfig (two file sets) with `overrides` (dotted keys) on top."""
    return load_eval_config(None, {"output": "out", "test_dir": "tests", "train_sets": dict(TWO_SETS)} | overrides)


# --- EvalConfig -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output": ""}, "output is required"),
        ({"train_sets": {"full": "a.json"}}, r"at least two training sets.*got \['full'\]"),
        ({"train_sets": {}}, r"at least two training sets.*got \[\]"),
        ({"train_sets": {"full": "a.json", "rand": "random:nope"}},
         r"train_sets.rand: 'random:nope' must name a set that is a file, one of \['full'\]"),
        ({"train_sets": THREE_SETS | {"r2": "random:rand"}},
         r"train_sets.r2: 'random:rand' must name a set that is a file, one of \['full', 'sel'\]"),
        ({"train_sets": {"full": "a.json", "a/b": "b.json"}}, r"name 'a/b' must be letters, digits"),
        ({"train_sets": {"full": "a.json", "..": "b.json"}}, r"name '\.\.' must be letters"),
        ({"train_sets": {"full": "a.json", "a_vs_b": "b.json"}}, r"without '_vs_'"),
        ({"train_sets": {"full": "a.json", "sel": ""}}, r"train_sets.sel: expected a path or random:NAME"),
        ({"baseline": "all"}, r"eval.baseline 'all' is not a training set: \['full', 'sel'\]"),
        ({"train_sets": THREE_SETS, "baseline": "rand"}, r"baseline set 'rand' must be a file, not 'random:sel'"),
        ({"compare": ["sel"]}, r"compare: 'sel' is not A:B"),
        ({"compare": ["sel-full"]}, r"compare: 'sel-full' is not A:B"),
        ({"compare": ["sel:nope"]}, r"compare: 'nope' is not a training set"),
        ({"compare": ["nope:full"]}, r"compare: 'nope' is not a training set"),
        ({"compare": ["sel:sel"]}, r"compare: sel:sel compares a set with itself"),
        ({"test_sets": ["vicuna", "mmlu"]}, r"test_sets: \['mmlu'\]; choose from vicuna, koala"),
        ({"test_sets": []}, r"test_sets: none; choose from"),
        ({"test_dir": ""}, r"test_dir is required"),
        ({"test_limit": 0}, r"test_limit must be positive, got 0"),
        ({"test_limit": -2}, r"test_limit must be positive, got -2"),
        ({"heldout_rows": -1}, r"heldout_rows must be >= 0, got -1"),
    ],
)  # fmt: skip
def test_eval_config_rejects(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(**overrides)


def test_eval_config_pairs() -> None:
    cfg = _cfg(train_sets=THREE_SETS)
    assert cfg.pairs() == [("sel", "full"), ("rand", "full")]  # every other set vs the baseline, in order
    middle = _cfg(train_sets={"sel": "b.json", "full": "a.json", "rand": "random:full"})
    assert middle.pairs() == [("sel", "full"), ("rand", "full")]
    assert _cfg(train_sets=THREE_SETS, compare=["sel:rand"]).pairs() == [("sel", "rand")]
    other = _cfg(train_sets=THREE_SETS, baseline="sel", compare=["full:sel", "rand:sel"])
    assert other.pairs() == [("full", "sel"), ("rand", "sel")]
    assert _cfg(heldout_rows=0).heldout_rows == 0 and _cfg(test_limit=1).test_limit == 1
    assert pair_name("sel", "full") == "sel vs full"


# --- the eval command line ------------------------------------------------------------------------------


def _eval_values(*argv: str) -> dict:
    args, extra = _parser().parse_known_args(["eval", *argv])
    return _eval_overrides(args, extra)


def test_eval_flags_become_config_keys() -> None:
    values = _eval_values(
        "--train-sets", "full=a.json", "sel=b.json", "rand=random:sel", "--test-sets", "vicuna,koala",
        "--test-limit", "3", "--train.lr", "1e-3",
    )  # fmt: skip
    assert values == {
        "train_sets": {"full": "a.json", "sel": "b.json", "rand": "random:sel"},
        "test_sets": ["vicuna", "koala"],
        "test_limit": "3",
        "train.lr": "1e-3",
    }
    cfg = load_eval_config(None, values | {"output": "out", "test_dir": "tests"})
    assert cfg.train_sets == {"full": "a.json", "sel": "b.json", "rand": "random:sel"}
    assert cfg.test_sets == ["vicuna", "koala"] and cfg.test_limit == 3 and cfg.train.lr == 1e-3
    assert cfg.pairs() == [("sel", "full"), ("rand", "full")]
    spaced = _eval_values("--test-sets", " lima , ,vicuna", "--seed", "4", "--baseline", "sel")
    assert spaced == {"test_sets": ["lima", "vicuna"], "seed": "4", "baseline": "sel"}
    pairs = _eval_values("--train-sets", *THREE_SETS_ARGS, "--compare", "sel:rand,sel:full")
    assert load_eval_config(None, pairs | {"output": "o", "test_dir": "t"}).pairs() == [
        ("sel", "rand"),
        ("sel", "full"),
    ]


@pytest.mark.parametrize("item", ["full", "=a.json", "full="])
def test_malformed_train_set_flag(item: str) -> None:
    with pytest.raises(ConfigError, match=rf"--train-sets '{item}': expected NAME=PATH"):
        _eval_values("--train-sets", item, "sel=b.json")


def test_eval_command_stops_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ev"
    rc = main(["eval", "--output", str(out), "--train-sets", "full=a.json", "--test-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("raysel: error: eval needs at least two training sets")
    assert not out.exists()
    assert main(["eval", "--output", str(out), "--train-sets", "full", "sel=b.json", "--test-dir", "x"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err and not out.exists()


# --- held-out split and training tables -----------------------------------------------------------------


def _table(rows: list[tuple[str, str, str]], meta: dict | None = None) -> pa.Table:
    """Canonical good rows from (instruction, output, source); the id is the content id."""
    cols = {
        S.ID: [S.row_id(ins, "", out) for ins, out, _ in rows],
        S.INSTRUCTION: [ins for ins, _, _ in rows],
        S.INPUT: [""] * len(rows),
        S.OUTPUT: [out for _, out, _ in rows],
        S.SOURCE: [src for _, _, src in rows],
        S.MESSAGES: [""] * len(rows),
        S.RAW: ["{}"] * len(rows),
        S.REJECT_REASON: [""] * len(rows),
    }
    table = pa.table(cols, schema=S.CANONICAL_SCHEMA)
    return table.replace_schema_metadata({"raysel": json.dumps(meta)}) if meta is not None else table


def _baseline(n: int = 20) -> pa.Table:
    return _table([(f"task {i}", f"answer {i}", f"full.jsonl:{i + 1}") for i in range(n)])


def _ids(table: pa.Table) -> list[str]:
    return table[S.ID].to_pylist()


def test_heldout_is_a_seeded_sample_in_file_order() -> None:
    base = _baseline(20)
    order = {i: k for k, i in enumerate(_ids(base))}
    held, ids = _heldout(_cfg(heldout_rows=5, seed=0), base)
    assert held.num_rows == 5 and ids == set(_ids(held)) and len(ids) == 5
    positions = [order[i] for i in _ids(held)]
    assert positions == sorted(positions)  # file order
    assert held.equals(base.take(positions))  # whole baseline rows, unchanged
    again, _ = _heldout(_cfg(heldout_rows=5, seed=0), base)
    assert _ids(again) == _ids(held)
    other, _ = _heldout(_cfg(heldout_rows=5, seed=1), base)
    assert _ids(other) != _ids(held)
    most, most_ids = _heldout(_cfg(heldout_rows=19, seed=0), base)  # leaves one training row
    assert most.num_rows == 19 and len(most_ids) == 19


@pytest.mark.parametrize("k", [20, 21])
def test_heldout_needs_a_training_row_left(k: int) -> None:
    with pytest.raises(InputError, match=rf"heldout_rows={k} leaves no training row in the baseline set 'full'"):
        _heldout(_cfg(heldout_rows=k), _baseline(20))


def test_no_heldout() -> None:
    base = _baseline(20)
    held, ids = _heldout(_cfg(heldout_rows=0), base)
    assert held.num_rows == 0 and ids == set() and held.schema.equals(base.schema)
    train, sets = _training_tables(_cfg(heldout_rows=0), {"full": base, "sel": base.slice(3, 6)}, ids)
    assert train["full"].equals(base) and train["sel"].equals(base.slice(3, 6))
    assert sets == {
        "full": {"source": "a.json", "heldout_removed": 0, "train_rows": 20},
        "sel": {"source": "b.json", "heldout_removed": 0, "train_rows": 6},
    }


def _split():
    """20 baseline rows with 5 held out; sel = 2 held-out rows, a copy of a third (same content, another
    source) and 4 training rows."""
    cfg = _cfg(train_sets=THREE_SETS, heldout_rows=5, seed=0)
    base = _baseline(20)
    held, ids = _heldout(cfg, base)
    rest = [i for i, row_id in enumerate(_ids(base)) if row_id not in ids]
    h = [_ids(base).index(i) for i in _ids(held)]
    sel_rows = [h[0], rest[1], h[1], rest[4], rest[7], rest[10]]
    sel = base.take(sel_rows)
    copy = _table([(f"task {h[2]}", f"answer {h[2]}", "other.jsonl:9")])
    sel = pa.concat_tables([sel, copy])
    meta = {"rows_read": 21, "rejected": 1, "rejected_by_reason": {"empty output": 1}, "rejected_examples": []}
    read = {"full": base.replace_schema_metadata({"raysel": json.dumps(meta)}), "sel": sel}
    return cfg, read, base, held, ids, [rest[1], rest[4], rest[7], rest[10]]


def test_training_tables_drop_the_heldout_rows_everywhere() -> None:
    cfg, read, base, _, ids, sel_train = _split()
    assert len(set(_ids(read["sel"])) & ids) == 3 and read["sel"].num_rows == 7  # 2 rows + 1 copy held out
    train, sets = _training_tables(cfg, read, ids)
    assert list(train) == list(sets) == ["full", "sel", "rand"]  # the config's order
    for name, table in train.items():
        assert not set(_ids(table)) & ids, name
    assert train["full"].num_rows == 15 and _ids(train["full"]) == [i for i in _ids(base) if i not in ids]
    assert _ids(train["sel"]) == _ids(base.take(sel_train))
    assert sets["full"] == {
        "source": "a.json",
        "rows_read": 21,
        "rejected": 1,
        "rejected_by_reason": {"empty output": 1},
        "rejected_examples": [],
        "heldout_removed": 5,
        "train_rows": 15,
    }
    assert sets["sel"] == {"source": "b.json", "heldout_removed": 3, "train_rows": 4}  # no metadata: no counts
    assert sets["rand"] == {"source": "random:sel", "rows_read": 4, "rejected": 0, "heldout_removed": 0,
                            "train_rows": 4}  # fmt: skip


def test_a_set_left_empty_by_the_heldout_split_stops_with_the_fix() -> None:
    base = _baseline(6)
    cfg = _cfg(heldout_rows=2)
    read = {"full": base, "sel": base.slice(0, 1)}
    held = {base[S.ID][i].as_py() for i in range(6)} - {base[S.ID][1].as_py()}  # row 0 (sel's only row) held out
    with pytest.raises(InputError, match="training set 'sel' has no row left.*lower --heldout_rows"):
        _training_tables(cfg, read, held)


def test_an_empty_test_set_stops_with_its_path(tmp_path: Path) -> None:
    from raysel.evaluate.testsets import read_testset

    path = tmp_path / "koala.jsonl"
    path.write_text("\n")
    with pytest.raises(InputError, match=r"koala.jsonl: the koala test set has no prompt"):
        read_testset(path)


def test_random_control_samples_the_baseline_training_rows() -> None:
    cfg, read, _, _, ids, _ = _split()
    train, _ = _training_tables(cfg, read, ids)
    pool = _ids(train["full"])
    rand = _ids(train["rand"])
    assert len(rand) == train["sel"].num_rows == 4 and len(set(rand)) == 4
    assert set(rand) <= set(pool) and not set(rand) & ids
    assert [pool.index(i) for i in rand] == sorted(pool.index(i) for i in rand)  # in file order
    assert train["rand"].schema.equals(train["full"].schema)
    again, _ = _training_tables(cfg, read, ids)
    assert _ids(again["rand"]) == rand
    reseeded, _ = _training_tables(_cfg(train_sets=THREE_SETS, heldout_rows=5, seed=3), read, ids)
    assert _ids(reseeded["rand"]) != rand and _ids(reseeded["full"]) == pool
    two = _cfg(train_sets=THREE_SETS | {"rand2": "random:sel"}, heldout_rows=5)
    both, sets = _training_tables(two, read, ids)
    assert _ids(both["rand"]) == rand and len(_ids(both["rand2"])) == 4 and _ids(both["rand2"]) != rand
    assert sets["rand2"]["train_rows"] == 4


def test_random_control_larger_than_the_baseline() -> None:
    cfg = _cfg(train_sets=THREE_SETS, heldout_rows=3)
    base = _baseline(8)
    held, ids = _heldout(cfg, base)  # 5 baseline training rows
    sel = _table([(f"other {i}", "x", f"sel.jsonl:{i + 1}") for i in range(6)])  # 6 rows, none held out
    msg = r"train_sets.rand = random:sel: set 'sel' has 6 training rows, more than the baseline 'full' has \(5\)"
    with pytest.raises(InputError, match=msg):
        _training_tables(cfg, {"full": base, "sel": sel}, ids)
    train, _ = _training_tables(cfg, {"full": base, "sel": sel.slice(0, 5)}, ids)  # exactly as many: all of them
    assert _ids(train["rand"]) == _ids(train["full"])


# --- held-out loss, prompts table -----------------------------------------------------------------------


def _losses(loss: list[float], n: list[int]) -> pa.Table:
    return pa.table({S.LOSS_COND: pa.array(loss, pa.float32()), S.N_ANSWER_TOKENS: pa.array(n, pa.int32())})


def test_heldout_loss_is_token_weighted() -> None:
    assert heldout_loss(_losses([1.0, 3.0, float("nan")], [1, 3, 5])) == pytest.approx(2.5)  # (1*1 + 3*3) / 4
    assert heldout_loss(_losses([1.0, 3.0, 7.0, float("inf")], [1, 3, 0, 2])) == pytest.approx(2.5)
    assert heldout_loss(_losses([2.0, 2.0], [10, 30])) == pytest.approx(2.0)
    assert heldout_loss(_losses([0.5, 4.0], [3, 1])) == pytest.approx((0.5 * 3 + 4.0) / 4)
    assert math.isnan(heldout_loss(_losses([float("nan")] * 3, [1, 2, 3])))
    assert math.isnan(heldout_loss(_losses([1.0], [0])))
    assert math.isnan(heldout_loss(_losses([], [])))


def test_prompts_table() -> None:
    prompts = {
        "vicuna": [Prompt("vicuna", "1", "Q one"), Prompt("vicuna", "2", "Q two")],
        "sinstruct": [Prompt("sinstruct", "s1", "Summarize.", "A text.")],
        "lima": [Prompt("lima", "1", "Q lima")],  # the same id as vicuna's first: another test set
    }
    table = _prompts_table(prompts)
    assert table.schema.equals(PROMPTS_SCHEMA)
    assert table.to_pylist() == [
        {"id": "vicuna:1", "testset": "vicuna", "prompt_id": "1", "instruction": "Q one", "input": ""},
        {"id": "vicuna:2", "testset": "vicuna", "prompt_id": "2", "instruction": "Q two", "input": ""},
        {"id": "sinstruct:s1", "testset": "sinstruct", "prompt_id": "s1", "instruction": "Summarize.",
         "input": "A text."},
        {"id": "lima:1", "testset": "lima", "prompt_id": "1", "instruction": "Q lima", "input": ""},
    ]  # fmt: skip
    dup = {"koala": [Prompt("koala", "k0", "a"), Prompt("koala", "k1", "b"), Prompt("koala", "k0", "c")]}
    with pytest.raises(InputError, match=r"test prompt id 'koala:k0' appears twice"):
        _prompts_table(dup)


# --- text_prompt ----------------------------------------------------------------------------------------


def _word_tokenizer(single: str):
    """A WordLevel tokenizer whose post-processor adds special tokens as `single` says (e.g. "<s> $A")."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "</s>", "Below", "is", "an", "instruction", "###", ":", "Response", "Name", "colors", "."]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


ALPACA = build_prompt("alpaca", "Name three colors.", "")


def test_text_prompt_without_special_tokens(tiny_hf_model) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf_model)
    assert _encode(tok, "Name three colors.", True) == _encode(tok, "Name three colors.", False)  # adds nothing
    assert text_prompt(tok, ALPACA) == ALPACA
    assert text_prompt(_word_tokenizer("$A"), ALPACA) == ALPACA
    assert text_prompt(_word_tokenizer("$A </s>"), ALPACA) == ALPACA  # a trailing EOS is not a prompt's


def test_text_prompt_spells_out_the_bos() -> None:
    tok = _word_tokenizer("<s> $A")
    assert _encode(tok, "Name", True) == [1, 10]
    prompt = text_prompt(tok, ALPACA)
    assert prompt == "<s>" + ALPACA
    assert _encode(tok, prompt, False) == _encode(tok, ALPACA, True)


def test_text_prompt_spells_out_the_bos_of_a_tokenizer_that_also_adds_an_eos() -> None:
    # Training (sft, add_special_tokens=True) sees "<s> prompt answer </s>": the prompt starts with the BOS.
    tok = _word_tokenizer("<s> $A </s>")
    assert _encode(tok, "Name", True) == [1, 10, 2]
    prompt = text_prompt(tok, ALPACA)
    assert _encode(tok, prompt, False) == _encode(tok, ALPACA, True)[:-1]


# --- GenerateStage's text templates ---------------------------------------------------------------------

ROWS = [("Name three colors.", ""), ("Translate to French.", "Good morning")]


def _prompts_seen(cfg: GenerateConfig, monkeypatch) -> tuple[list[str], dict]:
    stage = GenerateStage(cfg)
    seen: list[str] = []
    generate = stage.generator.generate

    def spy(prompts, params):
        seen.extend(prompts)
        return generate(prompts, params)

    monkeypatch.setattr(stage.generator, "generate", spy)
    batch = {
        S.INSTRUCTION: np.array([r[0] for r in ROWS], dtype=object),
        S.INPUT: np.array([r[1] for r in ROWS], dtype=object),
    }
    return seen, stage(batch)


@pytest.mark.parametrize("template", ["alpaca", "wiz"])
def test_generate_with_a_text_template(template: str, monkeypatch) -> None:
    seen, out = _prompts_seen(GenerateConfig(backend="fake", template=template, system="Ignored."), monkeypatch)
    want = [build_prompt(template, ins, inp) for ins, inp in ROWS]
    assert seen == want
    assert out[S.GEN_PROMPT_TOKENS].tolist() == [len(p.split()) for p in want]
    if template == "alpaca":
        assert seen[0].endswith("### Instruction:\nName three colors.\n\n### Response:")
        assert seen[1].endswith("### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:")


def test_generate_with_the_chat_template(monkeypatch) -> None:
    assert GenerateConfig().template == "chat"
    seen, _ = _prompts_seen(GenerateConfig(backend="fake"), monkeypatch)
    assert seen == ["<|user|>Name three colors.\n<|assistant|>",
                    "<|user|>Translate to French.\n\nGood morning\n<|assistant|>"]  # fmt: skip
    seen, _ = _prompts_seen(GenerateConfig(backend="fake", system="Be brief."), monkeypatch)
    assert seen[0] == "<|system|>Be brief.\n<|user|>Name three colors.\n<|assistant|>"
