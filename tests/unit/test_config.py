"""Unit tests for raysel.config: defaults, YAML + dotted overrides, CLI coercion, errors, hash."""

from __future__ import annotations

import re
import textwrap

import pytest

from raysel.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    ScoreConfig,
    SelectConfig,
    dump_yaml,
    load_config,
)
from raysel.readers import ColumnMap

REQUIRED = {"data.input": "corpus.jsonl", "output": "runs/x"}


def _load(**overrides: object) -> RunConfig:
    return load_config(None, REQUIRED | {k.replace("__", "."): v for k, v in overrides.items()})


def test_defaults() -> None:
    cfg = _load()
    assert cfg.output == "runs/x"
    assert cfg.seed == 0
    assert cfg.data == DataConfig(input="corpus.jsonl")
    assert cfg.data.strict is False and cfg.data.dedupe is True and cfg.data.limit is None
    assert cfg.data.columns == ColumnMap()
    s = cfg.score
    assert (s.model, s.backend, s.template) == ("smollm2", "hf", "alpaca")
    assert (s.max_length, s.batch_size, s.token_budget, s.concurrency) == (512, 64, 512, None)  # from the cluster
    assert ScoreConfig(device="cuda").token_budget == 32 * 512  # derived per device
    assert (s.num_cpus, s.num_gpus, s.device, s.dtype, s.quantize) == (None, None, "cpu", "float32", "none")
    assert s.threads is None and s.engine_kwargs == {}
    assert cfg.select == SelectConfig(method="ifd", ratio=None, k=None)


def test_yaml_file_with_dotted_overrides(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            # a job
            output: runs/from_yaml
            data:
              input: data/a.jsonl
              limit: 10
            score:
              backend: fake
              batch_size: 16
              engine_kwargs:
                gpu_memory_utilization: 0.5
            select:
              ratio: 0.2
            """
        )
    )
    cfg = load_config(path, {"score.batch_size": "32", "seed": "7", "data.strict": "true"})
    assert cfg.output == "runs/from_yaml"
    assert cfg.data.input == "data/a.jsonl" and cfg.data.limit == 10
    assert cfg.score.backend == "fake"
    assert cfg.score.batch_size == 32  # the override wins over the file
    assert cfg.score.engine_kwargs == {"gpu_memory_utilization": 0.5}
    assert cfg.seed == 7
    assert cfg.data.strict is True
    assert cfg.select.ratio == 0.2


def test_cli_strings_are_coerced() -> None:
    cfg = _load(select__ratio="0.1", score__batch_size="32", data__strict="true", score__num_cpus="2")
    assert cfg.select.ratio == 0.1 and type(cfg.select.ratio) is float
    assert cfg.score.batch_size == 32 and type(cfg.score.batch_size) is int
    assert cfg.data.strict is True
    assert cfg.score.num_cpus == 2.0 and type(cfg.score.num_cpus) is float  # int widened to float


@pytest.mark.parametrize("key", ["data.limit", "select.ratio", "score.num_gpus", "score.threads"])
def test_cli_null_string_becomes_none(key: str) -> None:
    cfg = load_config(None, REQUIRED | {key: "null"})
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) is None


def test_yaml_null_is_none(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("output: o\ndata: {input: i, limit: null}\nselect: {ratio: null, k: 5}\n")
    cfg = load_config(path)
    assert cfg.data.limit is None and cfg.select.ratio is None and cfg.select.k == 5


def test_unknown_key_names_dotted_path_and_close_match() -> None:
    with pytest.raises(ConfigError, match=r"'score\.max_lenght'.*did you mean 'score\.max_length'"):
        _load(score__max_lenght="3")


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'select\.zzzz'; valid keys: method, ratio, k"):
        _load(select__zzzz=1)


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'scroe'.*did you mean 'score'"):
        load_config(None, REQUIRED | {"scroe": {"batch_size": 1}})


@pytest.mark.parametrize(
    ("key", "value"),
    [("score.batch_size", "abc"), ("score.batch_size", True), ("data.strict", "maybe"), ("seed", 1.5)],
)
def test_wrong_type_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        load_config(None, REQUIRED | {key: value})


def test_literal_choice_error_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"score\.backend: 'torch' is not one of 'hf', 'vllm', 'fake'"):
        _load(score__backend="torch")


def test_section_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match=r"score: expected a mapping"):
        load_config(None, REQUIRED | {"score": 3})


def test_ratio_and_k_together_rejected() -> None:
    with pytest.raises(ConfigError, match="ratio or select.k, not both"):
        _load(select__ratio="0.1", select__k="5")
    with pytest.raises(ConfigError):
        SelectConfig(ratio=0.1, k=5)


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, 2])
def test_ratio_out_of_range(ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"select\.ratio must be in \(0, 1\]"):
        SelectConfig(ratio=ratio)


def test_ratio_one_and_k_positive_accepted() -> None:
    assert SelectConfig(ratio=1).ratio == 1
    with pytest.raises(ConfigError, match="select.k must be positive"):
        SelectConfig(k=0)


def test_missing_input_and_output() -> None:
    with pytest.raises(ConfigError, match=r"data\.input is required.*--input"):
        load_config(None, {"output": "o"})
    with pytest.raises(ConfigError, match=r"output is required.*--output"):
        load_config(None, {"data.input": "i"})


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_token_budget_below_max_length() -> None:
    with pytest.raises(ConfigError, match=r"token_budget=100 is below score\.max_length=512"):
        ScoreConfig(token_budget=100)
    assert ScoreConfig(token_budget=512, max_length=512).token_budget == 512


@pytest.mark.parametrize("name", ["max_length", "batch_size", "token_budget", "concurrency"])
def test_nonpositive_sizes(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"score\.{name} must be positive"):
        ScoreConfig(**{name: 0})


def test_max_length_too_small() -> None:
    with pytest.raises(ConfigError, match="max_length=8"):
        ScoreConfig(max_length=8)


def test_int8_needs_hf_on_cpu() -> None:
    with pytest.raises(ConfigError, match="quantize=int8"):
        ScoreConfig(backend="vllm", quantize="int8")
    with pytest.raises(ConfigError, match="quantize=int8"):
        ScoreConfig(backend="hf", device="cuda", quantize="int8")
    assert ScoreConfig(backend="hf", quantize="int8").quantize == "int8"


def test_data_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="data.limit"):
        _load(data__limit="0")


def test_hash_stable_and_sensitive() -> None:
    a, b = _load(), _load()
    assert a.hash() == b.hash()
    assert len(a.hash()) == 16
    assert _load(score__batch_size=8).hash() != a.hash()
    assert _load(select__ratio=0.2).hash() != a.hash()
    assert _load(seed=1).hash() != a.hash()


def test_dump_yaml_round_trips(tmp_path) -> None:
    cfg = _load(score__backend="fake", select__k=3, score__engine_kwargs={"tensor_parallel_size": 2})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg
    assert load_config(path).hash() == cfg.hash()


def test_cli_exponent_float_is_coerced() -> None:
    assert _load(select__ratio="1e-3").select.ratio == 0.001


def test_cli_engine_kwargs_values_are_coerced() -> None:
    cfg = _load(score__engine_kwargs__tensor_parallel_size="2", score__engine_kwargs__enforce_eager="true")
    assert cfg.score.engine_kwargs == {"tensor_parallel_size": 2, "enforce_eager": True}


def _ist(**extra) -> dict:
    return {"output": "o", "data.input": "i", "select.method": "iterselecttune"} | extra


def test_iterselecttune_defaults_and_sections() -> None:
    cfg = load_config(None, _ist())
    assert cfg.select.ratio == 0.2 and cfg.judge.backend == "local" and cfg.judge.local.model == "smollm2"
    assert cfg.iterselecttune.alpha == 0.8 and cfg.iterselecttune.training_rounds == 3
    assert load_config(None, _ist(**{"select.k": 7})).select.ratio is None  # k given: no default ratio
    nested = load_config(None, _ist(**{"judge.local.backend": "vllm", "judge.local.max_new_tokens": "12"}))
    assert nested.judge.local.backend == "vllm" and nested.judge.local.max_new_tokens == 12


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("iterselecttune.alpha", 1.5, "alpha must be in"),
        ("iterselecttune.subset_ratio", 0, "subset_ratio and batch_ratio"),
        ("iterselecttune.batch", 0, "batch must be positive"),
        ("judge.budget_usd", -1, "budget_usd must be >= 0"),
        ("judge.backend", "gpt4", "is not one of"),
        ("generate.temperature", -0.5, "temperature must be >= 0"),
        ("classifier.epochs", 0, "classifier.epochs must be positive"),
        ("pre_experience.enabled", True, "iterselecttune does not score IFD"),
    ],
)
def test_iterselecttune_bad_values_name_the_key(key: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, _ist(**{key: value}))


def test_cpu_threads_default_uses_the_node() -> None:
    import os

    from raysel.backends.base import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(ScoreConfig()) == max(1, cores)  # one actor: every core of its node
    assert cpu_threads(ScoreConfig(concurrency=cores * 2)) == 1  # more actors than cores: one each
    assert cpu_threads(ScoreConfig(threads=3)) == 3  # explicit settings win
    assert cpu_threads(ScoreConfig(concurrency=cores * 2, num_cpus=2.5)) == 3  # never below the reserved CPUs


def test_identity_leaves_out_the_fields_marked_runtime() -> None:
    import dataclasses

    from raysel.config import RUNTIME, GenerateConfig, JudgeConfig, TrainConfig, identity

    score = identity(ScoreConfig(batch_size=8, concurrency=3, num_cpus=1.5, threads=2, packing=True))
    assert set(score) == {"model", "backend", "template", "max_length", "device", "dtype", "quantize", "engine_kwargs"}
    # a changed batch size, pool or thread count is the same step; a changed window is another
    assert identity(ScoreConfig(batch_size=8, concurrency=4)) == identity(ScoreConfig())
    assert identity(ScoreConfig(max_length=256)) != identity(ScoreConfig())
    marked = {f.name for f in dataclasses.fields(GenerateConfig) if f.metadata.get(RUNTIME)}
    assert marked == {"batch_size", "concurrency", "num_cpus", "num_gpus"}
    # nested sections keep their own results-changing fields only: the judge's local generator
    judge = identity(JudgeConfig(concurrency=2, budget_usd=1.0, price_input_per_mtok=3.0))
    assert judge["local"] == identity(GenerateConfig(max_new_tokens=8, template="chat")) | {
        "model": JudgeConfig().local.model
    }
    assert not {"concurrency", "budget_usd", "price_input_per_mtok", "api_key_env", "cache"} & set(judge)
    assert {"backend", "model", "max_tokens", "temperature"} <= set(judge)
    train = identity(TrainConfig())
    assert "checkpoint_every" not in train and "cpus_per_worker" not in train and "lr" in train


def test_method_defaults_come_from_the_registry() -> None:
    from raysel.methods import METHODS

    assert set(METHODS) == {"ifd", "iterit", "iterselecttune"}
    common = {"output": "o", "data.input": "x.jsonl"}
    iterit = load_config(None, common | {"select.method": "iterit"})
    assert iterit.select.ratio == METHODS["iterit"].default_ratio and iterit.score.template == "iterit"
    ist = load_config(None, common | {"select.method": "iterselecttune"})
    assert ist.select.ratio == METHODS["iterselecttune"].default_ratio
    ifd = load_config(None, common)
    assert ifd.select.ratio is None and METHODS["ifd"].ratio(ifd.select.ratio) == 0.1  # applied at selection
    assert load_config(None, common | {"select.method": "iterit", "select.k": 3}).select.ratio is None
    with pytest.raises(ConfigError, match="select.method: 'cherry' is not one of 'ifd', 'iterit', 'iterselecttune'"):
        load_config(None, common | {"select.method": "cherry"})


def test_method_that_is_not_a_name_is_a_config_error(tmp_path) -> None:
    for value in ("[ifd, iterit]", "{name: ifd}", "3"):
        path = tmp_path / "c.yaml"
        path.write_text(f"output: o\ndata: {{input: x.jsonl}}\nselect: {{method: {value}}}\n")
        with pytest.raises(ConfigError, match=r"select\.method"):
            load_config(path, {})


def test_pre_experience_is_refused_where_the_registry_says_so() -> None:
    from raysel.methods import METHODS

    for name, spec in METHODS.items():
        if spec.no_pre_experience is None:
            assert _load(select__method=name, pre_experience__enabled=True).pre_experience.enabled
        else:
            with pytest.raises(ConfigError, match=f"part of the ifd method; {re.escape(spec.no_pre_experience)}"):
                _load(select__method=name, pre_experience__enabled=True)
