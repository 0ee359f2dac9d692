"""Where run directories live: a local folder, or any pyarrow filesystem URI (Ray Train's
`storage_path` convention).

    output.root: runs                      # local, relative to where you start (not under a Ray job)
    output.root: /shared/activesyn-runs    # a shared mount
    output.root: s3://bucket/activesyn     # or gs://, hdfs://, file:// -- anything pyarrow.fs opens

With a URI the run works in a local copy (ACTIVESYN_CACHE/runs/NAME) and that copy is synced to
URI/NAME after every state save and at the end; `activesyn resume/status/report/export URI/NAME`
read it back (into the same local copy). The URI is kept in RUN/storage.json.

Under `ray job submit --working-dir .` the entrypoint's working directory is Ray's temporary copy of
the working dir (deleted with the head), so a RELATIVE root is placed under ~/activesyn-runs instead
(ACTIVESYN_RUNS overrides it), and the choice is printed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from activesyn_ray.atomic_files import atomic_write_json

STORAGE_FILE = "storage.json"
SYNC_MANIFEST = ".synced.json"  # {relative path: [size, mtime_ns]} of the last upload, local only
DEFAULT_JOB_ROOT = "~/activesyn-runs"


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def in_ray_job_workdir() -> bool:
    """True inside a `ray job submit` entrypoint whose cwd is Ray's temporary working_dir copy."""
    cwd = os.getcwd()
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and "runtime_resources" in cwd or \
        "/runtime_resources/working_dir_files/" in cwd


def persistent_root() -> Path:
    return Path(os.environ.get("ACTIVESYN_RUNS", DEFAULT_JOB_ROOT)).expanduser()


def local_base(root: str, field: str = "output.root") -> tuple[Path, str | None]:
    """(the local folder for a non-URI `field` value, note to print or None)."""
    path = Path(root).expanduser()
    if not path.is_absolute() and in_ray_job_workdir():
        base = persistent_root() / path
        return base, (f"running under `ray job submit`: relative {field} {root!r} would land in "
                      f"Ray's temporary working dir; using {base} (set output.root or ACTIVESYN_RUNS "
                      f"to choose)")
    return path, None


def staging_dir(uri: str) -> Path:
    """The local working copy of the run at `uri`: its name plus a hash of the whole URI (runs of
    an experiment share names like loss-s0 under different folders)."""
    import hashlib

    from activesyn_ray.assets import cache_dir

    uri = uri.rstrip("/")
    return cache_dir("runs") / f"{uri.rsplit('/', 1)[-1]}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def plan_run_dir(cfg, run_dir: str | None = None) -> tuple[Path, str | None, str | None]:
    """Where a new run lives: (local run directory, storage URI or None, note to print or None).

    --run-dir, else output.run_dir, else output.root/NAME-YYYYmmdd-HHMMSS; any of them may be a URI."""
    exact = run_dir or cfg.output.run_dir
    if exact is not None:
        if is_uri(exact):
            uri = str(exact).rstrip("/")
            return staging_dir(uri), uri, None
        local, note = local_base(str(exact), "output.run_dir")
        return local, None, note
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if is_uri(cfg.output.root):
        uri = f"{str(cfg.output.root).rstrip('/')}/{name}"
        return staging_dir(uri), uri, None
    base, note = local_base(cfg.output.root)
    return base / name, None, note


# ------------------------------------------------------------------------------------------- sync
def attach(run_dir: str | Path, uri: str) -> None:
    """Record that run_dir is synced to uri, and sync it now."""
    atomic_write_json(Path(run_dir) / STORAGE_FILE, {"uri": uri})
    sync_up(run_dir)


def remote_of(run_dir: str | Path) -> str | None:
    f = Path(run_dir) / STORAGE_FILE
    return json.loads(f.read_text())["uri"] if f.exists() else None


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def sync_up(run_dir: str | Path) -> int:
    """Upload the files of run_dir that changed since the last sync to its URI (no-op without one).
    Returns the number of files uploaded. Each file is written whole (object stores: one PUT), and
    state.json goes last, so a reader of the remote copy never sees a state ahead of its logs."""
    import pyarrow.fs as pafs

    run_dir = Path(run_dir)
    uri = remote_of(run_dir)
    if uri is None:
        return 0
    fs, base = _fs(uri)
    manifest_path = run_dir / SYNC_MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    new, changed = {}, []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name in (SYNC_MANIFEST,) or path.name.startswith(".") \
                or any(p.startswith(".") for p in path.relative_to(run_dir).parts[:-1]):
            continue  # temp files and folders of atomic writes, the manifest itself
        rel = path.relative_to(run_dir).as_posix()
        st = path.stat()
        new[rel] = [st.st_size, st.st_mtime_ns]
        if old.get(rel) != new[rel]:
            changed.append(rel)
    changed.sort(key=lambda r: r == "state.json")  # state last
    for rel in changed:
        dest = f"{base}/{rel}"
        fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(run_dir / rel), dest, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    atomic_write_json(manifest_path, new)
    return len(changed)


def remote_exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, base = _fs(uri.rstrip("/"))
    return fs.get_file_info(f"{base}/state.json").type != pafs.FileType.NotFound


def fetch(uri: str, dest: str | Path | None = None) -> Path:
    """Copy a run directory from its URI into a local folder (default: the staging copy) and keep
    the link, so a resumed run syncs back to the same place. Returns the local folder."""
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    fs, base = _fs(uri)
    if not remote_exists(uri):
        raise FileNotFoundError(f"{uri}: no state.json; not a run directory")
    dest = Path(dest) if dest else staging_dir(uri)
    dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(base, str(dest), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    atomic_write_json(dest / STORAGE_FILE, {"uri": uri})
    # what was just downloaded is what the remote holds: no need to upload it again
    atomic_write_json(dest / SYNC_MANIFEST, {
        p.relative_to(dest).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")})
    return dest


def local_run(run: str | os.PathLike) -> Path:
    """A RUN argument of the CLI (local folder or URI) as a local run directory."""
    return fetch(str(run)) if is_uri(run) else Path(run)
