"""Shared fixtures: a local Ray, the tiny instruction rows, a tiny random-init HF model built offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_JSONL = REPO_ROOT / "tests" / "assets" / "tiny_instructions.jsonl"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def read_tiny_rows() -> list[dict[str, str]]:
    """Return the rows of tests/assets/tiny_instructions.jsonl as dicts."""
    return [json.loads(line) for line in TINY_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs and no dashboard; reused (and left running) if one is already up."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_rows() -> list[dict[str, str]]:
    return read_tiny_rows()


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory) -> str:
    """Directory of a random-init 2-layer Llama and a WordLevel tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from raysel.templates import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

    rows = read_tiny_rows()
    texts = [r[k] for r in rows for k in ("instruction", "input", "output")]
    texts += [ALPACA_WITH_INPUT, ALPACA_NO_INPUT, CHAT_TEMPLATE]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=256, special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data directory (../shared/data beside the repo); skipped when absent."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
