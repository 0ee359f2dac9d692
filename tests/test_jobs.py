"""`ray job submit` as a first-class path: a real local head (loopback only), the tiny-student job submitted
through the Jobs CLI with a relative output root, SUCCEEDED, the run directory checked, and only
that head stopped."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from activesyn_ray import runstore

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head():
    """`ray start --head --block` in its own process group: killing that group stops exactly this
    head (gcs, raylet, dashboard and its workers) and nothing else of this user."""
    temp = Path(f"/tmp/asr-head-{os.getpid()}")  # short: unix socket paths must stay < 108 chars
    gcs, dash = _free_port(), _free_port()
    ports = {f"--{k}": _free_port() for k in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                              "metrics-export-port", "runtime-env-agent-port")}
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    # As in an activated venv: the job's `python` must be this environment's (CI calls
    # .venv/bin/python directly, without putting .venv/bin on PATH).
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--temp-dir={temp}", "--num-cpus=3", "--disable-usage-stats",
         *[f"{k}={v}" for k, v in ports.items()]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True, timeout=60).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "ray head did not come up"
            time.sleep(2)
        yield {"env": env, "dashboard": address}
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def test_tiny_job_through_ray_job_submit(ray_head, tmp_path):
    """The tiny-student job submitted with `--working-dir .` and the default RELATIVE output.root: the job
    joins this head, succeeds, and its run directory lands in a persistent folder (ACTIVESYN_RUNS),
    never inside Ray's temporary copy of the working dir."""
    home_runs = tmp_path / "home-runs"
    sets = ["budget.samples=8", "selection.k=4", "task.seed_size=16", "task.test_size=8",
            "student.epochs=1", "output.plots=false"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"],
           "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"env_vars": {"ACTIVESYN_RUNS": str(home_runs)}}), "--",
           "python", "-m", "activesyn_ray.jobs.run", "jobs/tiny-cpu.yaml",
           *sum((["--set", s] for s in sets), [])]
    deadline = time.time() + 120
    while True:  # right after `ray start` the job agent may not be up yet: retry that one error
        proc = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=900)
        log = proc.stdout + proc.stderr
        if "No available agent to submit job" not in log or time.time() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"Job '\S+' succeeded", log), log[-4000:]
    runs = list((home_runs / "runs").glob("tiny-cpu-*"))
    assert len(runs) == 1, log[-4000:]
    run_dir = runs[0]
    assert f"using {home_runs / 'runs'}" in log and "runtime_resources" not in str(run_dir)
    assert f"run directory: {run_dir}" in log and "final accuracy:" in log
    store = runstore.RunStore(run_dir)
    assert store.load_state()["done"]
    assert [m["samples"] for m in store.read(runstore.METRICS)] == [0, 4, 8]  # 0: starting student
    assert len(store.read(runstore.SYNTHETIC)) == 8
    # the job joined the head we started instead of starting its own Ray
    listing = subprocess.run([str(BIN / "ray"), "job", "list", "--address", ray_head["dashboard"]],
                             env=ray_head["env"], capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in listing
