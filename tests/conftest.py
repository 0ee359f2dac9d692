"""Shared test setup: offline, one model/extension cache per machine, CPU-sized, and ONE local Ray
for every in-process test of the pytest run (docs/testing.md).

A local Ray start costs ~10 s here and every actor process ~10 CPU-seconds of imports, so the
suite starts Ray once: `ray_session` joins the Ray this run already has. A module that needs no
Ray in its process (its own multi-node cluster, a Ray started the project's way) asks for
`no_shared_ray`; the next module that wants the shared one starts it again. Between modules the
shared Ray must be idle (every actor gone, every CPU free): a module that leaks an actor or a
placement group gets the Ray restarted under the next one, so one failure never starves the rest.
"""

import os
import time
from pathlib import Path

import pytest

# Set before any test imports transformers/ray: never reach a hub, keep caches out of the repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ACTIVESYN_CACHE", str(Path.home() / ".cache" / "activesyn_ray"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "activesyn_ray" / "torch_ext"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The teacher response cache (teacher.cache) is on by default for LLM engines and outlives a pytest
# run: the suite's tests must reach their engines (replica kills, requests seen by a server), so
# `enabled: auto` is off here; tests/test_cache.py turns it on in a folder of its own.
os.environ["ACTIVESYN_TEACHER_CACHE"] = "off"
# The loopback OpenAI server's key (tests/test_teacher.py): in the driver's environment before the
# shared Ray starts, so its local workers inherit it as a node's workers inherit `ray start`'s.
TEACHER_KEY_ENV, TEACHER_KEY = "ASR_TEST_TEACHER_KEY", "sk-test-0123456789-do-not-leak"
os.environ[TEACHER_KEY_ENV] = TEACHER_KEY

SHARED_CPUS = 4  # logical: the largest any in-process test asks for (2 ranks + 2 shards, ...)
_shared = {"up": False}


def _start_shared():
    import ray

    from activesyn_ray.runtime import _agent_port_chosen_by_os, start_local_ray, worker_env

    if _shared["up"] and ray.is_initialized():
        return ray
    if ray.is_initialized():  # someone else's (a test that started its own and left it)
        ray.shutdown()
    # as `activesyn run` starts its Ray: its agent off Ray's default port 52365, which a `ray start`
    # head of test_jobs.py needs while this Ray is up
    with _agent_port_chosen_by_os():
        start_local_ray(num_cpus=SHARED_CPUS, include_dashboard=False,
                        runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    _shared["up"] = True
    return ray


def _stop_shared():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _shared["up"] = False


def _idle(ray, timeout_s: float = 30) -> bool:
    """Whether every logical CPU is free again (actor kills and removals are asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free, total = ray.available_resources(), ray.cluster_resources()
        if free.get("CPU", 0) >= total.get("CPU", 0) - 1e-6:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def ray_session():
    """The pytest run's local Ray (address="local": never someone else's head on this machine),
    4 logical CPUs, workers with the run's environment. Left up for the next module when idle."""
    pytest.importorskip("ray")
    ray = _start_shared()
    yield ray
    if _shared["up"] and ray.is_initialized() and not _idle(ray):
        print("\n[conftest] the shared Ray is not idle after this module: restarting it")
        _stop_shared()


@pytest.fixture(scope="module")
def no_shared_ray():
    """For a module that starts a Ray of its own in this process (a multi-node cluster, a Ray the
    project starts itself): the shared one is stopped first."""
    _stop_shared()
    yield


def pytest_sessionfinish(session, exitstatus):
    if _shared["up"]:
        _stop_shared()


def pytest_terminal_summary(terminalreporter):
    """Seconds per test file (setup + call + teardown), slowest first: where the suite's time goes
    (docs/testing.md keeps the table)."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if hasattr(rep, "duration") and hasattr(rep, "nodeid"):
                f = rep.nodeid.split("::", 1)[0]
                per_file[f] = per_file.get(f, 0.0) + rep.duration
    if per_file:
        terminalreporter.section("seconds per test file")
        for f, s in sorted(per_file.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{s:8.1f}s  {f}")
