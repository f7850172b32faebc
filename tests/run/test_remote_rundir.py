"""Run directories on s3:// (a loopback S3, moto's server): outputs land in the bucket, a run resumes from it."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysel.cli import main
from tests.conftest import TINY_JSONL

TINY = TINY_JSONL


@pytest.fixture
def bucket(monkeypatch, tmp_path: Path):
    """An empty bucket `runs` on a loopback S3; AWS_ENDPOINT_URL points pyarrow (and boto3) at it."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (dev extra) provides the loopback S3")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "RAYSEL_STAGING_DIR": str(tmp_path / "staging")}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="runs")
    yield client
    server.stop()


def _keys(client, prefix: str) -> set[str]:
    listed = client.list_objects_v2(Bucket="runs", Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :] for o in listed}


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket="runs", Key=key)["Body"].read()


@pytest.mark.slow  # ~20 s here: full runs on Ray against the loopback S3
def test_a_run_lives_in_the_bucket_and_resumes_from_it(ray_local, bucket, tmp_path: Path, capsys) -> None:
    args = ["select", "--input", str(TINY), "--backend", "fake", "--k", "4"]
    assert main([*args, "--output", str(tmp_path / "local")]) == 0
    assert main([*args, "--output", "s3://runs/exp/a"]) == 0
    assert "run directory s3://runs/exp/a" in capsys.readouterr().out
    keys = _keys(bucket, "exp/a/")
    want = {"config.yaml", "manifest.json", "selected.jsonl", "rejected.jsonl", "scores.parquet"}
    want |= {f"steps/{step}.{ext}" for step in ("ingest", "score") for ext in ("parquet", "done.json")}
    assert want <= keys and not any(".parts/" in k for k in keys), keys
    local = tmp_path / "local"
    for name in ("selected.jsonl", "rejected.jsonl"):
        assert _get(bucket, f"exp/a/{name}") == (local / name).read_bytes(), name
    manifest = json.loads(_get(bucket, "exp/a/manifest.json"))
    assert manifest["counts"] == json.loads((local / "manifest.json").read_text())["counts"]

    # The driver machine is lost (no staging copy): the same command resumes from the bucket.
    shutil.rmtree(tmp_path / "staging")
    assert main([*args, "--output", "s3://runs/exp/a"]) == 0
    timings = json.loads(_get(bucket, "exp/a/manifest.json"))["timings_s"]
    assert timings["score"] == timings["ingest"] == "skipped (completed earlier)"
    # A staging copy holding files the bucket does not (left from an earlier run) never pollutes the run.
    (stale := next((tmp_path / "staging").iterdir()) / "round_9" / "old.parquet").parent.mkdir()
    stale.write_text("stale")
    assert main([*args, "--output", "s3://runs/exp/a"]) == 0
    assert not stale.exists() and not any(k.startswith("round_9") for k in _keys(bucket, "exp/a/"))

    # Another config is refused and the bucket is left as it was; --overwrite starts the run again.
    before = {k: _get(bucket, f"exp/a/{k}") for k in ("config.yaml", "selected.jsonl")}
    assert main([*args[:-1], "6", "--output", "s3://runs/exp/a"]) == 2
    assert "already holds a run with a different config" in capsys.readouterr().err
    assert before == {k: _get(bucket, f"exp/a/{k}") for k in before}
    assert main([*args[:-1], "6", "--output", "s3://runs/exp/a", "--overwrite"]) == 0
    assert len(_get(bucket, "exp/a/selected.jsonl").splitlines()) == 6
    assert isinstance(json.loads(_get(bucket, "exp/a/manifest.json"))["timings_s"]["score"], float)
    with pq.ParquetFile(__import__("io").BytesIO(_get(bucket, "exp/a/scores.parquet"))) as f:
        assert f.metadata.num_rows == manifest["counts"]["to_score"]


def test_a_model_in_the_bucket_loads_on_any_node(bucket, tiny_hf_model: str, tmp_path: Path, monkeypatch) -> None:
    """Actors on other nodes get a fine-tuned model as its run directory's URI: resolve_model downloads it once
    into the node's cache, and again when the model under that URI is rewritten."""
    from pyarrow import fs as pafs
    from transformers import AutoModelForCausalLM

    from raysel.backends.models import resolve_model

    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "cache"))
    s3, _ = pafs.FileSystem.from_uri("s3://runs")
    pafs.copy_files(tiny_hf_model, "runs/ev/models/full", destination_filesystem=s3)
    local = resolve_model("s3://runs/ev/models/full")
    assert Path(local).is_relative_to(tmp_path / "cache") and (Path(local) / "config.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 2
    assert resolve_model("s3://runs/ev/models/full") == local  # cached
    bucket.put_object(Bucket="runs", Key="ev/models/full/train_summary.json", Body=b"{}")  # the model rewritten
    again = resolve_model("s3://runs/ev/models/full")
    assert again != local and (Path(again) / "train_summary.json").is_file()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model("s3://runs/ev/models/none")


@pytest.mark.slow  # ~20 s here: full agree/select runs on Ray against the loopback S3
def test_a_selection_in_the_bucket_finds_its_scorer_agreement_there(ray_local, bucket, capsys) -> None:
    """raysel agree writes to the bucket; a select run beside it records that agreement, found or named."""
    agree = ["agree", "--input", str(TINY), "--output", "s3://runs/proj/ag", "--small", "tiny-scorer", "--large",
             "big-target", "--small.backend", "fake", "--large.backend", "fake", "--large.template", "wiz",
             "--sample", "12", "--bootstrap", "20"]  # fmt: skip
    assert main(agree) == 0
    figures = json.loads(_get(bucket, "proj/ag/agreement.json"))
    select = ["select", "--input", str(TINY), "--backend", "fake", "--scorer-model", "tiny-scorer", "--target-model",
              "big-target", "--k", "3"]  # fmt: skip
    assert main([*select, "--output", "s3://runs/proj/sel"]) == 0
    found = json.loads(_get(bucket, "proj/sel/manifest.json"))["scorer"]["agreement"]
    assert found["dir"] == "s3://runs/proj/ag" and found["matches"] and found["verdict"] == figures["verdict"]
    assert "scorer agreement: using s3://runs/proj/ag" in capsys.readouterr().out
    assert main([*select, "--output", "s3://runs/other/sel", "--agreement", "s3://runs/proj/ag"]) == 0
    named = json.loads(_get(bucket, "other/sel/manifest.json"))["scorer"]["agreement"]
    assert named["dir"] == "s3://runs/proj/ag" and named["top_recall"] == figures["top_recall"]
    assert main([*select, "--output", "s3://runs/other/sel2", "--agreement", "s3://runs/proj/none"]) == 2
    assert "s3://runs/proj/none/agreement.json does not exist" in capsys.readouterr().err
