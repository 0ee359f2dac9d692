"""The file primitives every module writes with, in a leaf module that imports nothing of the
project (runstore, storage, assets, report, tracking, ... all build on it).

Two write disciplines keep a killed process from leaving half a file:
  * whole files are written to a temp file in the same folder, fsynced, then os.replace()d: a reader
    sees the old file or the new one, never half of one (`atomic_write_text`, `atomic_write_json`,
    `write_jsonl`);
  * JSONL logs are appended one complete line per record and fsynced (`append_jsonl`); a process
    killed mid-line can leave a torn last line, which `read_jsonl` detects (no trailing newline /
    bad JSON) and `repair_jsonl` truncates.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a run dir is read by other users too
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically (for files written once, like the task splits)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append complete lines and fsync: after return, the rows survive a crash."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not data:
        return
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield complete records; a torn LAST line (crash mid-append) is skipped, a bad line
    anywhere else is corruption and raises with file:line."""
    path = Path(path)
    if not path.exists():
        return
    with open(path) as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        if last and not line.endswith("\n"):
            return  # torn tail: the writer died mid-line
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            if last:
                return
            raise ValueError(f"{path}:{i}: corrupt JSONL record ({err.msg})") from None


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn last line in place; returns the number of bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    raw = path.read_bytes()
    keep = raw.rfind(b"\n") + 1 if not raw.endswith(b"\n") else len(raw)
    if keep < len(raw):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(raw) - keep
