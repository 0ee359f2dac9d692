"""`ray job submit` as a first-class path: a real local head (loopback only), the quickstart submitted
through the Jobs CLI, SUCCEEDED, the run directory checked, and only that head stopped."""

import json
import os
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
def ray_head(tmp_path):
    # Short temp dir: Ray's unix socket paths must stay under 107 characters.
    temp = Path(f"/tmp/asr-head-{os.getpid()}")
    gcs, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true", f"--temp-dir={temp}", "--num-cpus=3",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    yield {"env": env, "dashboard": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}"}
    # Stop only our head: `ray stop` would kill every Ray of this user on the machine.
    subprocess.run([str(BIN / "ray"), "stop", "--force", f"--address=127.0.0.1:{gcs}"], env=env,
                   capture_output=True, timeout=120)
    for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines():
        if str(temp) in line or f"--gcs-address=127.0.0.1:{gcs}" in line or f"127.0.0.1:{gcs}" in line:
            pid = int(line.split()[0])
            if pid != os.getpid():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


def test_quickstart_through_ray_job_submit(ray_head, tmp_path):
    run_dir = tmp_path / "job-run"
    sets = ["budget.samples=8", "selection.k=4", "task.seed_size=16", "task.test_size=8",
            "student.epochs=1"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"],
           "--working-dir", str(ROOT), "--",
           "python", "-m", "activesyn_ray.jobs.run", "jobs/quickstart.yaml", "--run-dir", str(run_dir),
           *sum((["--set", s] for s in sets), [])]
    proc = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "SUCCEEDED" in log, log[-4000:]
    assert f"run directory: {run_dir}" in log and "final accuracy:" in log
    store = runstore.RunStore(run_dir)
    assert store.load_state()["done"]
    assert [m["samples"] for m in store.read(runstore.METRICS)] == [4, 8]
    assert len(store.read(runstore.SYNTHETIC)) == 8
    # the job joined the head we started instead of starting its own Ray
    listing = subprocess.run([str(BIN / "ray"), "job", "list", "--address", ray_head["dashboard"]],
                             env=ray_head["env"], capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in listing
