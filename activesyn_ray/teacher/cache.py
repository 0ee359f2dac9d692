"""The teacher response cache: a request already answered is not paid for again.

    cache = TeacherCache(cfg.teacher.cache, run="loss-s0-1a2b3c4d", run_dir=run_dir)
    key = request_key(identity, request, top_p=cfg.teacher.top_p, engine_cls=engine_cls)
    done, hits = cache.serve(requests, keys, send=dispatcher.run, on_result=charge)

Key: sha256 of a canonical JSON of what decides a reply -- the engine's identity
(`Engine.cache_identity`: the engine, its model as a fingerprint of the model folder's files, CPU or
GPU, library versions; for `openai` the endpoint URL without any user:password, the model and API
name, never the key or a header), the request kind, the full prompt text and the sampling
parameters (temperature, top_p, max_new_tokens, and the request's sampling seed when it can change
the reply: not for greedy decoding). A change of any of them is another key: a miss.

Model fingerprint: teacher/fingerprint.py (`model_fingerprint`).

Where: a local folder or any pyarrow storage URI (`teacher.cache.dir`), shared by every run that
names it. One file per entry, entries/<2 hex>/<key>.json, written whole and renamed into place
(atomic_files.atomic_write_text; on a URI: a temp object then a move), so two runs writing at once
lose nothing and a reader never sees half an entry. Each entry holds the reply (text, token counts,
the procedural engine's structured sample), the engine and model label, and a sha256 of itself:
an entry that is truncated, corrupt or not the key's is logged, counted (`corrupt`), deleted, and
its request sent to the teacher; it never stops a run. A hit refreshes the entry's mtime; past
`max_bytes` the least recently used entries are deleted (on an object store: the oldest written).
Per run, runs/<run>.json counts hits, misses, corrupt entries and the tokens paid vs served
(`activesyn cache stats`).

Exactness: a hit is the very reply the paid request got, so a run whose every request hits equals
the run that paid, sample for sample. vLLM seeds each request, so its reply is a function of the
key; the hf engine seeds a whole batch with its first request's seed (engines/hf_engine.py), so
there the reply of a request also depended on its batch: a run partly served from the cache sends
its misses in other batches than a run that paid for all, and those misses may differ from that
run's -- as they would with another micro_batch_size.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable

from activesyn_ray.atomic_files import atomic_write_text
from activesyn_ray.teacher.engines.base import Completion, TeacherRequest
from activesyn_ray.teacher.fingerprint import canonical, sha256_text

log = logging.getLogger(__name__)

ENV = "ACTIVESYN_TEACHER_CACHE"
"""The default location (a folder or URI) for teacher.cache.dir: null; `off` turns
teacher.cache.enabled: auto off (what the test suite does: its tests must reach the engines)."""
FORMAT = 1
ENTRIES, RUNS = "entries", "runs"
EVICT_TO = 0.9
"""Eviction deletes down to this share of max_bytes, so not every later write evicts again."""
STALE_TMP_S = 3600
"""A temp file this old belongs to a writer that died mid-write: eviction scans delete it."""
COUNTS = ("hits", "misses", "corrupt", "stored", "store_errors", "evicted", "tokens_paid",
          "tokens_cached")


# ------------------------------------------------------------------------------ what a key is made of
def request_key(identity: dict, req: TeacherRequest, *, top_p: float, engine_cls) -> str:
    """The cache key of one request sent to the engine `identity` describes."""
    sampled = req.temperature > 0
    doc = {"format": FORMAT, "teacher": identity, "kind": req.kind, "prompt": req.prompt,
           "sampling": {"temperature": req.temperature, "top_p": top_p if sampled else None,
                        "max_new_tokens": req.max_new_tokens,
                        "seed": req.seed if engine_cls.seed_matters(req.temperature) else None}}
    if engine_cls.cache_reads_example:
        doc["example"] = req.example
        doc["student_answer"] = req.student_answer
    return sha256_text(canonical(doc))


def cache_enabled(cache_cfg, engine_cls) -> bool:
    if cache_cfg.enabled == "auto":
        if os.environ.get(ENV, "").strip().lower() == "off":
            return False
        return engine_cls.cache_by_default
    return bool(cache_cfg.enabled)


def default_location() -> str:
    env = os.environ.get(ENV, "").strip()
    if env and env.lower() != "off":
        return env
    from activesyn_ray.assets import cache_dir

    return str(cache_dir("teacher-cache"))


def location_of(cache_cfg) -> str:
    """teacher.cache.dir as a location: a URI as is; a relative folder where a relative output.root
    would go (under `ray job submit`: ~/activesyn-runs, not Ray's temporary working dir)."""
    from activesyn_ray.storage import is_uri, local_base

    if not cache_cfg.dir:
        return default_location()
    if is_uri(cache_cfg.dir):
        return cache_cfg.dir
    return str(local_base(cache_cfg.dir, "teacher.cache.dir")[0])


def run_name(run_dir: str | Path | None, fallback: str) -> str:
    """How runs/<run>.json names a run: its folder's name + a hash of its whole path (an
    experiment's runs share names like loss-s0 under different folders)."""
    if run_dir is None:
        return f"{fallback}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = Path(run_dir).resolve()
    return f"{path.name}-{sha256_text(str(path))[:8]}"


# ------------------------------------------------------------------------------------------ stores
class LocalStore:
    """A local folder (or a shared mount)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.location = str(self.root)

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: str) -> None:
        atomic_write_text(self._path(rel), data)  # temp file + fsync + rename: whole or absent

    def delete(self, rel: str) -> None:
        self._path(rel).unlink(missing_ok=True)

    def touch(self, rel: str) -> None:
        try:
            os.utime(self._path(rel))
        except OSError:
            pass

    def files(self, folder: str) -> list[tuple[str, int, float]]:
        """(relative path, bytes, mtime) of every file under `folder`; temp files of writers that
        died long ago are deleted on the way."""
        out, base, now = [], self.root / folder, time.time()
        for dirpath, _, names in os.walk(base):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # deleted meanwhile (another run's eviction)
                if name.startswith("."):
                    if name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
                        p.unlink(missing_ok=True)
                    continue
                out.append((p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return out


class ArrowStore:
    """Any pyarrow.fs URI (s3://, gs://, hdfs://, file://). Writes go to a temp object that is then
    moved into place; reads never see half an entry. A hit refreshes nothing on an object store
    (no cheap touch), so there eviction goes by write time; file:// refreshes the mtime."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.location = uri.rstrip("/")
        self.fs, self.base = pafs.FileSystem.from_uri(self.location)
        self._local = self.fs.type_name == "local"

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def read(self, rel: str) -> bytes | None:
        import pyarrow.fs as pafs

        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError:
            if self.fs.get_file_info(self._path(rel)).type == pafs.FileType.NotFound:
                return None
            raise

    def write(self, rel: str, data: str) -> None:
        dest = self._path(rel)
        tmp = self._path(f"tmp/{uuid.uuid4().hex}.tmp")
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        self.fs.create_dir(tmp.rsplit("/", 1)[0], recursive=True)
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data.encode())
            self.fs.move(tmp, dest)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self._path(rel))
        except (FileNotFoundError, OSError):
            pass

    def touch(self, rel: str) -> None:
        if self._local:
            try:
                os.utime(self._path(rel))
            except OSError:
                pass

    def files(self, folder: str) -> list[tuple[str, int, float]]:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._path(folder), recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            out.append((info.path[len(self.base) + 1:], info.size or 0, mtime))
        return out


def open_store(location: str):
    from activesyn_ray.storage import is_uri

    return ArrowStore(location) if is_uri(location) else LocalStore(location)


# ------------------------------------------------------------------------------------------ entries
def entry_path(key: str) -> str:
    return f"{ENTRIES}/{key[:2]}/{key}.json"


def encode_entry(key: str, comp: Completion, *, about: dict) -> str:
    body = {"format": FORMAT, "key": key, "created": round(time.time(), 3), **about,
            "completion": {"text": comp.text, "prompt_tokens": comp.prompt_tokens,
                           "completion_tokens": comp.completion_tokens, "example": comp.example}}
    return json.dumps({**body, "sha256": sha256_text(canonical(body))}, sort_keys=True) + "\n"


def decode_entry(raw: bytes, key: str) -> Completion:
    """The stored reply, or ValueError saying why the entry cannot be trusted."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON ({len(raw)} bytes: truncated or overwritten): {err}") from None
    if not isinstance(obj, dict) or "sha256" not in obj:
        raise ValueError("no checksum")
    digest = obj.pop("sha256")
    if digest != sha256_text(canonical(obj)):
        raise ValueError("checksum mismatch (changed after it was written)")
    if obj.get("key") != key or obj.get("format") != FORMAT:
        raise ValueError("the entry of another key or format")
    c = obj.get("completion")
    ok = isinstance(c, dict) and isinstance(c.get("text"), str) and \
        all(isinstance(c.get(k), int) and c[k] >= 0 for k in ("prompt_tokens", "completion_tokens")) \
        and (c.get("example") is None or isinstance(c["example"], dict))
    if not ok:
        raise ValueError("no valid reply in it")
    return Completion(text=c["text"], prompt_tokens=c["prompt_tokens"],
                      completion_tokens=c["completion_tokens"], example=c.get("example"))


# ------------------------------------------------------------------------------------------- cache
class TeacherCache:
    """One run's handle on a cache location: lookups, stores, eviction and the run's counts."""

    def __init__(self, location: str, *, max_bytes: int | None = None, run: str | None = None,
                 run_dir: str | Path | None = None):
        self.store = open_store(location)
        self.location = self.store.location
        self.max_bytes = max_bytes
        self.run = run or run_name(None, "pool")
        self.counts = dict.fromkeys(COUNTS, 0)
        self._meta = {"run": self.run, "run_dir": None if run_dir is None else str(run_dir),
                      "first": round(time.time(), 3)}
        prior = self._read_stats()  # a resumed run goes on counting
        if prior:
            self._meta["first"] = prior.get("first", self._meta["first"])
            for k in COUNTS:
                self.counts[k] = int(prior.get(k, 0))
        self._approx_bytes: int | None = None  # what the entries hold, scanned on the first write

    @classmethod
    def from_config(cls, cache_cfg, *, run_dir=None, name: str = "pool") -> "TeacherCache":
        """The run's handle; a location that cannot be opened stops the run at its start, in one
        line (a cache that later fails to read or write only costs its hits)."""
        from activesyn_ray.teacher.engines.base import TeacherError

        location = location_of(cache_cfg)
        try:
            return cls(location, max_bytes=cache_cfg.max_bytes, run=run_name(run_dir, name),
                       run_dir=run_dir)
        except Exception as err:  # noqa: BLE001 -- pyarrow raises its own kinds for a bad URI
            raise TeacherError(f"teacher.cache.dir {location}: cannot open it ({type(err).__name__}: "
                               f"{err}); fix it, or set teacher.cache.enabled: false") from None

    # -- entries
    def get(self, key: str) -> Completion | None:
        """The stored reply; None on a miss. An unreadable entry is logged, counted, deleted."""
        rel = entry_path(key)
        try:
            raw = self.store.read(rel)
        except OSError as err:
            log.warning("teacher cache %s: cannot read %s (%s); the request goes to the teacher",
                        self.location, rel, err)
            return None
        if raw is None:
            return None
        try:
            comp = decode_entry(raw, key)
        except ValueError as why:
            self.counts["corrupt"] += 1
            log.warning("teacher cache %s: entry %s is unusable (%s); deleted, the request goes "
                        "to the teacher", self.location, rel, why)
            try:
                self.store.delete(rel)
            except OSError:
                pass
            return None
        self.store.touch(rel)  # least recently USED goes first
        return comp

    def put(self, key: str, comp: Completion, *, about: dict | None = None) -> bool:
        """Store a reply (atomically). A failed write is logged and counted; the run goes on."""
        data = encode_entry(key, comp, about=about or {})
        try:
            self.store.write(entry_path(key), data)
        except OSError as err:
            self.counts["store_errors"] += 1
            log.warning("teacher cache %s: cannot store an entry (%s); the run goes on without it",
                        self.location, err)
            return False
        self.counts["stored"] += 1
        if self._approx_bytes is not None:
            self._approx_bytes += len(data)
        return True

    def evict(self, *, force_scan: bool = False) -> int:
        """Delete least recently used entries while the cache is over max_bytes; returns how many."""
        if self.max_bytes is None:
            return 0
        if not force_scan and self._approx_bytes is not None and \
                self._approx_bytes <= self.max_bytes:
            return 0
        files = self.store.files(ENTRIES)
        total = sum(size for _, size, _ in files)
        gone = 0
        if total > self.max_bytes:
            target = int(self.max_bytes * EVICT_TO)
            for rel, size, _ in sorted(files, key=lambda f: f[2]):
                if total <= target:
                    break
                try:
                    self.store.delete(rel)
                except OSError:
                    continue
                total -= size
                gone += 1
            self.counts["evicted"] += gone
            log.info("teacher cache %s: %d least recently used entries deleted (limit %d bytes)",
                     self.location, gone, self.max_bytes)
        self._approx_bytes = total
        return gone

    # -- one batch of requests
    def serve(self, requests: list[TeacherRequest], keys: dict[str, str],
              send: Callable[..., dict[str, Completion]],
              on_result: Callable[..., None], *, about: dict | None = None
              ) -> tuple[dict[str, Completion], set[str]]:
        """Answer what the cache holds, send the rest with `send(misses, on_result=...)` (a
        dispatcher's run), store their replies. `on_result(req, comp, cached=...)` fires once per
        request answered: misses as they come back, then hits (so a teacher that fails outright
        leaves nothing charged). Returns ({request id: Completion}, ids served from the cache)."""
        hits: dict[str, Completion] = {}
        for r in requests:
            if (comp := self.get(keys[r.id])) is not None:
                hits[r.id] = comp
        misses = [r for r in requests if r.id not in hits]

        def paid(req: TeacherRequest, comp: Completion) -> None:
            self.put(keys[req.id], comp, about=about)
            self.counts["tokens_paid"] += comp.prompt_tokens + comp.completion_tokens
            on_result(req, comp, cached=False)

        try:
            done = send(misses, on_result=paid) if misses else {}
            self.counts["misses"] += len(misses)
            for r in requests:
                if (comp := hits.get(r.id)) is not None:
                    self.counts["hits"] += 1
                    self.counts["tokens_cached"] += comp.prompt_tokens + comp.completion_tokens
                    on_result(r, comp, cached=True)
                    done[r.id] = comp
        finally:
            try:
                self.evict()
            except OSError as err:  # a listing that failed (a storage URI out of reach)
                log.warning("teacher cache %s: eviction skipped (%s)", self.location, err)
            self.save_stats()
        return done, set(hits)

    # -- per-run counts
    def _read_stats(self) -> dict | None:
        try:
            raw = self.store.read(f"{RUNS}/{self.run}.json")
            return json.loads(raw) if raw else None
        except (OSError, ValueError):
            return None

    def save_stats(self) -> None:
        doc = {**self._meta, **self.counts, "last": round(time.time(), 3)}
        try:
            self.store.write(f"{RUNS}/{self.run}.json", json.dumps(doc, sort_keys=True) + "\n")
        except OSError as err:
            log.warning("teacher cache %s: cannot write the run's counts (%s)", self.location, err)


# ---------------------------------------------------------------------------- activesyn cache ...
def stats(location: str) -> dict:
    """What `activesyn cache stats` shows: entries, bytes, and each run's counts."""
    store = open_store(location)
    files = store.files(ENTRIES)
    runs = []
    for rel, _, _ in store.files(RUNS):
        try:
            runs.append(json.loads(store.read(rel) or b"{}"))
        except ValueError:
            continue
    runs.sort(key=lambda r: r.get("first", 0))
    return {"location": store.location, "entries": len(files),
            "bytes": sum(size for _, size, _ in files), "runs": runs}


def clear(location: str) -> dict:
    """Delete every entry and run count; returns what was deleted."""
    store = open_store(location)
    n = b = 0
    for folder in (ENTRIES, RUNS):
        for rel, size, _ in store.files(folder):
            store.delete(rel)
            if folder == ENTRIES:
                n, b = n + 1, b + size
    return {"location": store.location, "entries": n, "bytes": b}
