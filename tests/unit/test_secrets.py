"""Secrets come only from the environment; config files are loaded safely and echo no values back.

(A whole run with a judge key, checked against the run directory, report, driver output and Ray's logs:
tests/methods/test_iterselecttune.py::test_a_killed_run_resumes_without_judging_twice and the uninterrupted run.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from raysel.cli import main
from raysel.config import ConfigError, dump_yaml, load_config

SECRET = "sk-never-echo-7c0ffee"


def test_a_key_in_the_config_is_refused_without_echoing_it(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{input: x.jsonl}}\noutput: {tmp_path / 'run'}\njudge:\n  api_key: {SECRET}\n")
    assert main(["select", "--config", str(job)]) == 2
    err = capsys.readouterr().err
    assert "judge.api_key" in err and "api_key_env" in err and SECRET not in err
    assert main(["select", "--input", "x.jsonl", "--output", str(tmp_path / "run"), "--judge.api_key", SECRET]) == 2
    err = capsys.readouterr().err
    assert "judge.api_key" in err and SECRET not in err
    assert not (tmp_path / "run").exists()


def test_config_dumps_name_the_variable_never_its_value(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = load_config(None, {"data.input": "x.jsonl", "output": "runs/x", "select.method": "iterselecttune"})
    text = dump_yaml(cfg)
    assert "api_key_env: OPENAI_API_KEY" in text and SECRET not in text and SECRET not in str(cfg.to_dict())


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job = tmp_path / "job.yaml"
    job.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\ndata: {{input: x.jsonl}}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(job)
    assert not marker.exists()
