"""Unit tests for raysel.cli argument handling: shortcuts, dotted overrides, and errors before Ray starts."""

from __future__ import annotations

import pytest

from raysel import cli
from raysel.cli import SHORTCUTS, _overrides, _parser
from raysel.config import ConfigError, load_config
from raysel.run import context


def _values(*argv: str) -> dict[str, object]:
    args, extra = _parser().parse_known_args(list(argv))
    return _overrides(args, extra)


def test_shortcuts_map_to_config_keys() -> None:
    values = _values(
        "select", "--input", "in.jsonl", "--output", "runs/x", "--max-length", "128", "--model", "m",
        "--backend", "fake", "--template", "wiz", "--limit", "5", "--seed", "3", "--method", "ifd",
        "--ratio", "0.2",
    )  # fmt: skip
    assert values == {
        "data.input": "in.jsonl",
        "output": "runs/x",
        "score.max_length": "128",
        "score.model": "m",
        "score.backend": "fake",
        "score.template": "wiz",
        "data.limit": "5",
        "seed": "3",
        "select.method": "ifd",
        "select.ratio": "0.2",
        "select.k": None,  # --ratio replaces a k that a job file may set
    }
    cfg = load_config(None, values)
    assert cfg.score.max_length == 128 and cfg.data.limit == 5 and cfg.seed == 3 and cfg.select.ratio == 0.2


def test_every_shortcut_targets_a_real_field() -> None:
    for flag, key in SHORTCUTS.items():
        value = {"select.ratio": "0.5", "select.k": "2", "select.method": "ifd", "score.backend": "fake",
                 "score.template": "wiz"}.get(key, "16")  # fmt: skip
        load_config(None, {"data.input": "i", "output": "o"} | {key: value})  # no unknown-key error
        args, extra = _parser().parse_known_args(["select", "--" + flag.replace("_", "-"), value])
        paired = {"select.k": "select.ratio", "select.ratio": "select.k"}
        expected = {key: value} | ({paired[key]: None} if key in paired else {})
        assert _overrides(args, extra) == expected


def test_unset_flags_are_not_overrides() -> None:
    assert _values("select", "--input", "a") == {"data.input": "a"}


def test_strict_flag() -> None:
    assert _values("select", "--strict")["data.strict"] is True
    assert "data.strict" not in _values("select")


@pytest.mark.parametrize(
    "argv",
    [["--score.batch_size", "8"], ["--score.batch_size=8"], ["--score.batch-size", "8"]],
)
def test_dotted_override_forms(argv: list[str]) -> None:
    values = _values("select", "--input", "a", *argv)
    assert values["score.batch_size"] == "8"
    assert load_config(None, values | {"output": "o"}).score.batch_size == 8


def test_dotted_override_beats_shortcut_order() -> None:
    values = _values("select", "--max-length", "128", "--score.max_length", "256")
    assert values["score.max_length"] == "256"


def test_score_subcommand() -> None:
    args, extra = _parser().parse_known_args(["score", "ifd", "--input", "a", "--score.concurrency", "2"])
    assert args.command == "score" and args.metric == "ifd"
    assert _overrides(args, extra) == {"data.input": "a", "score.concurrency": "2"}


def test_override_needs_a_value() -> None:
    with pytest.raises(ConfigError, match="--score.batch_size needs a value"):
        _values("select", "--score.batch_size")


def test_stray_positional_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unexpected argument 'oops'"):
        _values("select", "oops")


def test_ratio_and_k_mutually_exclusive(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_known_args(["select", "--ratio", "0.1", "--k", "5"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def no_ray(monkeypatch) -> list[str]:
    """Record (instead of doing) any attempt of a run to start Ray."""
    calls: list[str] = []
    monkeypatch.setattr(context, "init_ray", lambda: calls.append("ray started"))
    return calls


def test_main_config_error_returns_2(tmp_path, capsys, no_ray) -> None:
    out = tmp_path / "run"
    code = cli.main(["select", "--input", str(tmp_path), "--output", str(out), "--ratio", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("raysel: error: ") and "select.ratio must be in (0, 1], got 2" in err
    assert no_ray == [] and not out.exists()


def test_main_unknown_key_returns_2(tmp_path, capsys, no_ray) -> None:
    code = cli.main(["select", "--input", "a", "--output", str(tmp_path), "--score.batchsize", "8"])
    assert code == 2
    assert "did you mean 'score.batch_size'" in capsys.readouterr().err
    assert no_ray == []


def test_main_missing_input_returns_2(tmp_path, capsys, no_ray) -> None:
    missing = tmp_path / "nope.jsonl"
    code = cli.main(["select", "--input", str(missing), "--output", str(tmp_path / "run"), "--backend", "fake"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("raysel: error: ") and str(missing) in err and "no such file" in err


def test_main_missing_input_fails_before_ray(tmp_path, no_ray) -> None:
    out = tmp_path / "run"
    code = cli.main(["select", "--input", str(tmp_path / "nope.jsonl"), "--output", str(out), "--backend", "fake"])
    assert code == 2
    assert no_ray == [], "Ray was started for a run whose input does not exist"


def test_k_flag_replaces_a_job_files_ratio(tmp_path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("output: runs/x\ndata: {input: in.jsonl}\nselect: {ratio: 0.1}\n")
    cfg = load_config(job, _values("select", "--k", "7"))
    assert cfg.select.k == 7 and cfg.select.ratio is None


def test_dedup_and_pre_experience_flags() -> None:
    base = ("select", "--input", "in.jsonl", "--output", "runs/x")
    cfg = load_config(None, _values(*base, "--dedup", "--pre-experience"))
    assert cfg.data.near_dedupe and cfg.data.dedupe and cfg.data.near_dup == 0.95
    assert cfg.pre_experience.enabled
    cfg = load_config(None, _values(*base, "--dedup", "0.9", "--cluster.k", "7", "--train.method", "lora"))
    assert cfg.data.near_dup == 0.9 and cfg.cluster.k == 7 and cfg.train.method == "lora"
    plain = load_config(None, _values(*base))
    assert not plain.data.near_dedupe and plain.data.near_dup is None and not plain.pre_experience.enabled
    with pytest.raises(ConfigError, match="near_dup"):
        load_config(None, _values(*base, "--dedup", "1.5"))
    with pytest.raises(ConfigError, match="micro_batch_size"):
        load_config(None, _values(*base, "--train.batch_size", "6", "--train.micro_batch_size", "4"))
    with pytest.raises(ConfigError, match="low_pct"):
        load_config(None, _values(*base, "--pre_experience.low_pct", "80", "--pre_experience.high_pct", "20"))


def test_scorer_model_leaves_the_replaced_model_as_the_target(tmp_path) -> None:
    def resolved(*argv: str) -> tuple[str, str | None]:
        args, extra = _parser().parse_known_args(["select", "--input", "in.jsonl", "--output", "runs/x", *argv])
        cfg = load_config(args.config, cli._trained_model(args, _overrides(args, extra)))
        return cfg.score.model, cfg.select.target_model

    assert resolved("--model", "big", "--scorer-model", "small") == ("small", "big")
    assert resolved("--scorer-model", "small", "--model", "big") == ("small", "big")  # flag order does not matter
    assert resolved("--model", "big", "--scorer-model", "small", "--target-model", "other") == ("small", "other")
    assert resolved("--scorer-model", "small") == ("small", None)  # nothing named to train: the scorer's own
    job = tmp_path / "job.yaml"
    job.write_text("score: {model: org/big-7b}\n")
    assert resolved("--config", str(job), "--scorer-model", "small") == ("small", "org/big-7b")
    assert resolved("--config", str(job), "--scorer-model", "org/big-7b") == ("org/big-7b", None)
