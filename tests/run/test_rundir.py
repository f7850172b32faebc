"""Who may write into a run directory: a run is never overwritten by accident (raysel.run.rundir, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysel.config import ConfigError, dump_yaml, load_config
from raysel.run.rundir import open_run


def _config(out: Path, **extra) -> str:
    return dump_yaml(load_config(None, {"data.input": "corpus.jsonl", "output": str(out), **extra}))


def test_new_and_empty_directories_are_claimed(tmp_path: Path) -> None:
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        rd = open_run(str(out), _config(out))
        assert rd.local == out and (out / "config.yaml").read_text() == _config(out)


def test_same_config_continues_the_run(tmp_path: Path, capsys) -> None:
    open_run(str(tmp_path), _config(tmp_path))
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "score.parquet").write_text("kept")
    open_run(str(tmp_path), _config(tmp_path))
    assert (tmp_path / "steps" / "score.parquet").read_text() == "kept"
    assert "(same config): resuming" in capsys.readouterr().out


def test_another_config_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    first = _config(tmp_path)
    open_run(str(tmp_path), first)
    (tmp_path / "selected.jsonl").write_text("theirs")
    with pytest.raises(ConfigError) as e:
        open_run(str(tmp_path), _config(tmp_path, **{"select.ratio": 0.3, "score.batch_size": 4}))
    msg = str(e.value)
    assert "score.batch_size" in msg and "select.ratio" in msg and "--resume" in msg and "--overwrite" in msg
    assert (tmp_path / "config.yaml").read_text() == first and (tmp_path / "selected.jsonl").read_text() == "theirs"


def test_resume_keeps_the_work_and_overwrite_removes_it(tmp_path: Path) -> None:
    open_run(str(tmp_path), _config(tmp_path))
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "ingest.parquet").write_text("kept")
    changed = _config(tmp_path, **{"select.ratio": 0.3})
    open_run(str(tmp_path), changed, resume=True)
    assert (tmp_path / "steps" / "ingest.parquet").is_file() and (tmp_path / "config.yaml").read_text() == changed
    again = _config(tmp_path, **{"select.ratio": 0.4})
    open_run(str(tmp_path), again, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    with pytest.raises(ConfigError, match="contradict"):
        open_run(str(tmp_path), again, resume=True, overwrite=True)


def test_a_directory_that_is_not_a_run_is_never_written(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match="not a raysel run directory"):
            open_run(str(tmp_path), _config(tmp_path), **flags)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    with pytest.raises(ConfigError, match="is a file"):
        open_run(str(tmp_path / "thesis.tex"), _config(tmp_path))


def test_the_demo_corpus_may_be_there_first(tmp_path: Path) -> None:
    (tmp_path / "demo_corpus.jsonl").write_text("{}\n")
    open_run(str(tmp_path), _config(tmp_path))
    assert (tmp_path / "demo_corpus.jsonl").is_file() and (tmp_path / "config.yaml").is_file()
