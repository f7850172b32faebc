"""The run directory: a local path or an s3:// / gs:// URI (pyarrow filesystems), and who may write into it.

A remote run works in a local staging copy (`RAYSEL_STAGING_DIR`, default ~/.cache/raysel/staging/<hash>):
every completed step (and every part of a long map step) is uploaded as it lands, so a run whose driver
machine is lost resumes from the bucket. S3-compatible stores other than AWS: set AWS_ENDPOINT_URL.

An existing run directory is never overwritten by accident: the same config continues the run there
(completed steps are skipped), a different config needs --resume (continue: steps whose inputs changed
are redone) or --overwrite (start again); a non-empty directory that is not a raysel run is never touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raysel.config import ConfigError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")
# Files an output directory may hold before its first run: the demo writes its corpus there.
_PRESEEDED = {"demo_corpus.jsonl"}


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


@dataclass
class RunDir:
    uri: str
    """The run directory as given (--output)."""
    local: Path
    """Where the run reads and writes: the directory itself, or the staging copy of a remote one."""
    fs: Any = None
    """pyarrow FileSystem of a remote run directory (None for a local one)."""
    root: str = ""
    """The run directory's path inside `fs`."""
    _sent: dict[str, tuple[int, int]] = field(default_factory=dict)

    def sync(self) -> int:
        """Upload files that are new or changed since the last sync (remote runs only); returns how many."""
        if self.fs is None:
            return 0
        from pyarrow import fs as pafs

        n = 0
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(self.local).as_posix()
            st = path.stat()
            if self._sent.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            pafs.copy_files(str(path), f"{self.root}/{rel}", destination_filesystem=self.fs)
            self._sent[rel] = (st.st_size, st.st_mtime_ns)
            n += 1
        gone = [r for r in self._sent if not (self.local / r).exists()]  # removed locally (e.g. parts)
        for rel in gone:
            self.fs.delete_file(f"{self.root}/{rel}")
            del self._sent[rel]
        for parent in sorted({Path(r).parent.as_posix() for r in gone}, key=len, reverse=True):
            if parent != "." and not (self.local / parent).exists():
                try:
                    self.fs.delete_dir(f"{self.root}/{parent}")
                except OSError:
                    pass  # already gone, or never a directory object
        return n

    def mark_sent(self, rel: str) -> None:
        """Record the local file `rel` as already in the remote store (it was just downloaded from there)."""
        st = (self.local / rel).stat()
        self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def storage_uri(self, local: Path | str) -> str:
        """Where Ray Train keeps checkpoints for `local`: its twin in the remote store (every node reaches
        it), or `local` itself, absolute. Paths outside the run directory are returned as given."""
        if "://" in str(local):
            return str(local)
        path = Path(local).resolve()
        if self.fs is None or not path.is_relative_to(self.local.resolve()):
            return str(path)
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{self.root}/{path.relative_to(self.local.resolve()).as_posix()}"


def absolute_storage(path: Path | str) -> str:
    """A Ray Train storage path as every node reads it: a URI as given, a local path made absolute (callers in a
    run pass RunDir.storage_uri's answer, the remote twin of a path in a remote run directory)."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def checkpoint_uri(checkpoint: Any) -> str:
    """A Ray Train checkpoint's location as a string Checkpoint(...) can open again (a URI when remote)."""
    kind = type(checkpoint.filesystem).__name__
    scheme = {"S3FileSystem": "s3://", "GcsFileSystem": "gs://"}.get(kind, "")
    return f"{scheme}{checkpoint.path}"


def _staging(uri: str) -> Path:
    base = Path(os.environ.get("RAYSEL_STAGING_DIR") or Path.home() / ".cache" / "raysel" / "staging")
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _changed(old_text: str, new_text: str) -> list[str]:
    try:
        old, new = _flat(yaml.safe_load(old_text) or {}), _flat(yaml.safe_load(new_text) or {})
    except yaml.YAMLError:
        return ["config.yaml (unreadable)"]
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def open_run(output: str, config_text: str, *, resume: bool = False, overwrite: bool = False) -> RunDir:
    """Claim `output` for a run with this resolved config (YAML text); returns the RunDir to work in.

    Raises ConfigError (nothing touched) when the directory holds something else, as described above.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: give one")
    if is_remote(output):
        from pyarrow import fs as pafs

        try:
            fs, root = pafs.FileSystem.from_uri(output)
        except Exception as e:  # noqa: BLE001 - bad URI or no credentials: the user's to fix
            raise ConfigError(f"output {output}: cannot open it as a pyarrow filesystem: {e}") from None
        rd = RunDir(uri=output, local=_staging(output), fs=fs, root=root.rstrip("/"))
        info = fs.get_file_info(pafs.FileSelector(rd.root, recursive=False, allow_not_found=True))
        names = {Path(i.path).name for i in info}
        old = _read_remote(fs, f"{rd.root}/config.yaml") if "config.yaml" in names else None
    else:
        rd = RunDir(uri=output, local=Path(output))
        names = {p.name for p in rd.local.iterdir()} if rd.local.is_dir() else set()
        if rd.local.exists() and not rd.local.is_dir():
            raise ConfigError(f"output {output} is a file, not a directory: choose a directory path")
        old = (rd.local / "config.yaml").read_text() if "config.yaml" in names else None
    if old is None and names - _PRESEEDED:
        shown = ", ".join(sorted(names)[:5])
        raise ConfigError(
            f"output {output} is not empty ({shown}{', ...' if len(names) > 5 else ''}) and is not a raysel "
            "run directory (no config.yaml): raysel will not write into it. Choose a new or empty directory."
        )
    if old is not None and overwrite:
        print(f"[raysel] --overwrite: removing the run in {output}", flush=True)
        _clear(rd)
    elif old is not None and old != config_text:
        if not resume:
            changed = _changed(old, config_text)
            raise ConfigError(
                f"output {output} already holds a run with a different config (changed: "
                f"{', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''}). Pass --resume to continue it with "
                "the new config (completed steps whose inputs did not change are kept), --overwrite to delete it "
                "and start again, or choose another --output."
            )
        print(f"[raysel] --resume: continuing the run in {output} with a changed config", flush=True)
    elif old is not None:
        print(f"[raysel] {output} holds this run already (same config): resuming it", flush=True)
    if rd.fs is not None:
        if old is None or overwrite:
            shutil.rmtree(rd.local, ignore_errors=True)
        else:
            _download(rd)
    rd.local.mkdir(parents=True, exist_ok=True)
    (rd.local / "config.yaml").write_text(config_text)  # the resolved config, before any work
    rd.sync()
    return rd


def _read_remote(fs: Any, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _clear(rd: RunDir) -> None:
    if rd.fs is not None:
        rd.fs.delete_dir_contents(rd.root, missing_dir_ok=True)
        shutil.rmtree(rd.local, ignore_errors=True)
        return
    for p in rd.local.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _download(rd: RunDir) -> None:
    """Make the staging copy the remote run: fetch files missing or of another size, drop files the bucket
    does not hold (a stale copy of an earlier run there must not be uploaded into this one)."""
    from pyarrow import fs as pafs

    infos = [i for i in rd.fs.get_file_info(pafs.FileSelector(rd.root, recursive=True)) if i.type == pafs.FileType.File]
    remote = {i.path[len(rd.root) + 1 :] for i in infos}
    for path in [p for p in rd.local.rglob("*") if p.is_file()] if rd.local.is_dir() else []:
        if path.relative_to(rd.local).as_posix() not in remote:
            path.unlink()
    for info in infos:
        rel = info.path[len(rd.root) + 1 :]
        dest = rd.local / rel
        if not (dest.is_file() and dest.stat().st_size == info.size):
            dest.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(dest), source_filesystem=rd.fs)
        rd.mark_sent(rel)
