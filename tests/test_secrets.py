"""Secrets: a planted API key is used by the openai engine where it runs, and appears nowhere else:
not in Ray's runtime_env (stored in its control store, shown by the dashboard and job info), not in
Ray's logs, not in records, ledger or state, not in exceptions, and nothing holding it pickles.

    pytest tests/test_secrets.py     # ~1 min: one local Ray, one openai replica, loopback server
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from activesyn_ray.budget import Ledger
from activesyn_ray.config import config_from_dict
from activesyn_ray.tasks import build_task
from activesyn_ray.teacher import TeacherError

KEY = "sk-planted-7f3a9c-never-write-me"


def test_worker_runtime_env_never_carries_a_key(monkeypatch):
    """What init_ray hands Ray as runtime_env (stored in the GCS, shown by the dashboard and job
    info) holds no key, under the conventional name either."""
    from activesyn_ray.runtime import worker_env

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert KEY not in json.dumps(worker_env())


@pytest.mark.slow
def test_planted_key_is_used_and_found_nowhere(monkeypatch, no_shared_ray):
    import ray

    import test_teacher as tt  # pytest puts tests/ on sys.path (no package)
    from test_teacher import _Server

    monkeypatch.setattr(tt, "KEY", KEY)  # the loopback server accepts exactly this key
    env_name = "ASR_PLANTED_KEY"
    monkeypatch.setenv(env_name, KEY)
    # the conventional name is covered by the test above (runtime.py's copy of it is pending)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv = _Server()
    cfg = config_from_dict({
        "task": {"kind": "gym", "name": "basic_arithmetic", "seed_size": 8, "test_size": 2},
        "teacher": {"engine": "openai", "model": "tiny:ctx=2048", "max_new_tokens": 8,
                    "temperature": 0.0,
                    "openai": {"base_url": srv.url, "model": "tiny", "api_key_env": env_name}},
        "budget": {"samples": 100},
        "resources": {"local_num_cpus": 2, "teacher": {"num_cpus": 0.5}}})
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    from activesyn_ray.teacher import TeacherPool

    assert not ray.is_initialized()
    ledger = Ledger(max_samples=100)
    pool = TeacherPool(cfg=cfg, task=task, ledger=ledger)  # starts Ray the project's way (runtime.py)
    try:
        recs = pool.generate(seeds[:2], iteration=0)
        assert [s["auth"] for s in srv.seen] == [f"Bearer {KEY}"] * 2  # the key was used
        job_env = json.dumps(ray.get_runtime_context().runtime_env)
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        ray_logs = [p for p in session.rglob("*") if p.is_file() and p.stat().st_size < 50 * 2**20]
        leaked = [str(p) for p in ray_logs if KEY.encode() in p.read_bytes()]
    finally:
        pool.shutdown()
        ray.shutdown()
    assert KEY not in job_env, "the key is in Ray's runtime_env (control store, dashboard)"
    assert not leaked, f"the key is in Ray's files: {leaked}"
    assert KEY not in json.dumps(recs) and KEY not in json.dumps(ledger.to_dict())
    assert KEY.encode() not in pickle.dumps((recs, ledger))
    # a rejected key: the error names the status, never the key
    from activesyn_ray.teacher.engines import build_engine

    monkeypatch.setenv(env_name, KEY + "-wrong")
    try:
        with pytest.raises(TeacherError, match="401") as info:
            build_engine(cfg).generate(["x"], max_new_tokens=2, temperature=0.0, top_p=1.0)
    finally:
        srv.close()
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert os.environ[env_name].startswith(KEY)  # still only in this process's environment
