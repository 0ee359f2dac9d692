"""`ray job submit` as the README says it, on a head with the CPUs Ray detects (2 on this box and CI).

- The README's own lines (read from README.md, not copied here) run as written: the wait for a
  fresh head, then the quickstart submitted with `--working-dir .`; SUCCEEDED, and the run directory
  in the persistent runs folder, never Ray's temporary copy of the working dir.
- Every job the README submits fits a head of 2 CPUs; a run that does not fit ends within seconds
  with ONE line of demand against capacity, before any run directory or actor exists.
- A run's own local Ray (`activesyn run`) and a `ray start --head` on the same machine, started in
  either order: the head still accepts jobs.

The heads here add to the README's `ray start --head --dashboard-host=127.0.0.1` only what keeps
them apart from any other Ray on the machine (their own ports and temp dir; `--block` in their own
process group, so the test stops exactly its head) -- never `--num-cpus`.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from activesyn_ray import fit, runstore
from activesyn_ray.config import load_config
from activesyn_ray.experiment import load_experiment
from activesyn_ray.placement import visible

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AGENT_PORT = 52365  # Ray's fixed default for the dashboard agent (the job API on each node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int, *, wait_s: float = 30) -> bool:
    """Whether a server listens on `port` (as the agent binds: SO_REUSEADDR, so connections of a
    head just stopped do not count); waits up to wait_s for one just stopped to let go."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                return False
            except OSError:
                if time.monotonic() > deadline:
                    return True
        time.sleep(2)


def readme_cluster_lines() -> list[str]:
    """The commands of README.md's `On a Ray cluster` code block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a Ray cluster"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    return [ln.split("  #")[0].strip() for ln in block.strip().splitlines() if ln.strip()]


def _readme_job_files() -> list[str]:
    return [re.search(r"activesyn_ray\.jobs\.run (\S+)", ln).group(1) for ln in readme_cluster_lines()
            if ln.startswith("ray job submit")]


def _configs(job_file: str):
    path = ROOT / job_file
    if "grid" in (yaml.safe_load(path.read_text()) or {}):  # as jobs/run.py tells them apart
        return [load_config(base, sets) for base, sets in load_experiment(path)[1]]
    return [load_config(path)]


# ------------------------------------------------------------------------------ no Ray needed
def test_readme_jobs_fit_a_two_cpu_head():
    """What the README submits fits the head a 2-core machine gets (Ray detects 2 CPUs)."""
    files = _readme_job_files()
    assert files == ["jobs/quickstart.yaml", "jobs/compare-cpu.yaml"], files
    head = {"CPU": 2.0, "memory": 8e9, "object_store_memory": 2e9, "node:__internal_head__": 1.0}
    for job_file in files:
        cfgs = _configs(job_file)
        for cfg in cfgs:
            fit.check(cfg, [head])  # raises FitError naming the pools otherwise
        assert max(fit.totals(fit.demand(c)[0]).get("CPU", 0) for c in cfgs) <= 2, job_file


def test_cpu_jobs_fit_their_own_local_ray():
    """`activesyn run JOB` starts a Ray of resources.local_num_cpus: every CPU job fits it."""
    for path in sorted((ROOT / "jobs").rglob("*.yaml")):
        if "apiVersion" in path.read_text():  # the KubeRay manifest
            continue
        cfgs = _configs(str(path.relative_to(ROOT)))
        if cfgs[0].resources.local_num_cpus is None:  # cluster jobs (GPUs, node types)
            continue
        for cfg in cfgs:
            fit.check(cfg, [{"CPU": float(cfg.resources.local_num_cpus)}])


def test_too_small_is_one_line_of_demand_against_capacity():
    cfg = load_config(ROOT / "jobs/tiny-cpu.yaml", ["resources.scorers.num_cpus=0.5"])
    head = {"CPU": 2.0, "memory": 8e9, "node:127.0.0.1": 1.0}
    with pytest.raises(fit.FitError) as err:
        fit.check(cfg, [head])
    assert str(err.value) == (
        "asks for 2.25 CPUs: trainer 1 + scorers 2 x 0.5 + teacher 0.25; the cluster has 2 CPUs; "
        "lower resources.trainer/scorers/teacher.num_cpus (or teacher.replicas), or start the head "
        "with --num-cpus 3")
    # GPUs and several nodes: each short resource, and adding nodes instead of --num-cpus
    cfg = load_config(ROOT / "jobs/tiny-cpu.yaml", ["resources.trainer.num_gpus=1",
                                                      "resources.trainer.num_cpus=3"])
    with pytest.raises(fit.FitError) as err:
        fit.check(cfg, [head, {"CPU": 1.0}])
    assert str(err.value) == (
        "asks for 4 CPUs: trainer 3 + scorers 2 x 0.375 + teacher 0.25; the cluster has 3 CPUs; "
        "lower resources.trainer/scorers/teacher.num_cpus (or teacher.replicas), or add nodes with "
        "1 more CPUs; and asks for 1 GPU: trainer 1; the cluster has 0 GPUs; lower "
        "resources.trainer.num_gpus, or add nodes with 1 more GPUs")
    assert "\n" not in str(err.value)


def test_too_small_local_ray_names_local_num_cpus():
    """The run's own Ray is sized by the config, not by `ray start`: the line says which field."""
    cfg = load_config(ROOT / "jobs/tiny-cpu.yaml", ["resources.local_num_cpus=1"])
    with pytest.raises(fit.FitError, match=r"^asks for 2 CPUs: trainer 1 \+ scorers 2 x 0.375 \+ teacher "
                                           r"0.25; the cluster has 1 CPU; lower .*, or set "
                                           r"resources.local_num_cpus: 2$"):
        fit.check(cfg, [{"CPU": 1.0}], local=True)


@pytest.mark.slow
def test_activesyn_run_on_a_too_small_local_ray_prints_one_line(tmp_path):
    """`activesyn run` (its own local Ray): the same check, one `error:` line, exit 2, no actor."""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "activesyn_ray.cli", "run", "jobs/tiny-cpu.yaml",
                          "--run-dir", str(tmp_path / "run"), "--set", "resources.local_num_cpus=1"],
                         cwd=ROOT, env=_head_env(), capture_output=True, text=True, timeout=600)
    print(f"activesyn run on 1 CPU: rc {res.returncode} after {time.monotonic() - t0:.0f}s")
    plain = "\n".join(ln for ln in res.stderr.splitlines() if not ln.lstrip().startswith(("│", "╭", "╰")))
    assert res.returncode == 2, plain[-3000:]  # (rich draws a traceback in boxes: the lines left)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: asks for 2 CPUs: trainer 1 + scorers 2 x 0.375 + teacher 0.25; the "
                      "cluster has 1 CPU; lower resources.trainer/scorers/teacher.num_cpus (or "
                      "teacher.replicas), or set resources.local_num_cpus: 2"], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_placement_group_bookkeeping_is_never_shown():
    """Ray adds resources per placed group (what the old timeout message listed instead of CPUs)."""
    pg = "f57954014a6b56343be2c6035de701000000"
    node = {"CPU": 2.0, f"CPU_group_{pg}": 1.0, f"CPU_group_0_{pg}": 1.0, f"bundle_group_0_{pg}": 1000.0,
            f"bundle_group_{pg}": 1000.0, "teacher_node": 1.0, "memory": 1e9, "node:1.2.3.4": 1.0}
    assert visible(node) == {"CPU": 2.0, "teacher_node": 1.0}


# ------------------------------------------------------------------------------ real heads
def _head_env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    # As in an activated venv: the job's `python` must be this environment's (CI calls
    # .venv/bin/python directly, without putting .venv/bin on PATH).
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class Head:
    """`ray start --head --dashboard-host=127.0.0.1` (the README's) + its own ports and temp dir,
    `--block` in its own process group: killing the group stops exactly this head."""

    def __init__(self, tag: str, *, default_agent_port: bool = False, env: dict | None = None):
        self.temp = Path(f"/tmp/asr-{tag}-{os.getpid()}")  # unix socket paths must stay < 108 chars
        self.gcs, dash = _free_port(), _free_port()
        ports = {f"--{k}": _free_port() for k in ("dashboard-agent-grpc-port", "metrics-export-port",
                                                  "runtime-env-agent-port", "ray-client-server-port")}
        if not default_agent_port:
            ports["--dashboard-agent-listen-port"] = _free_port()
        self.env = env or _head_env()
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--dashboard-host=127.0.0.1", "--block",
             "--node-ip-address=127.0.0.1", f"--port={self.gcs}", f"--dashboard-port={dash}",
             "--include-dashboard=true", f"--temp-dir={self.temp}", "--disable-usage-stats",
             *[f"{k}={v}" for k, v in ports.items()]],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()
        self.dashboard = f"http://127.0.0.1:{dash}"
        # what `ray job submit` and the wait command read when no --address is given
        self.client_env = dict(self.env, RAY_ADDRESS=self.dashboard)

    def sh(self, line: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        """A README line as written, run by bash in the repository root against this head."""
        return subprocess.run(["bash", "-c", line], cwd=ROOT, env=self.client_env, capture_output=True,
                              text=True, timeout=timeout)

    def cpus(self) -> float:
        out = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{self.gcs}"],
                             env=self.env, capture_output=True, text=True, timeout=120).stdout
        return float(re.search(r"/([\d.]+) CPU", out).group(1))

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """One head for the module; the job's runs folder (ACTIVESYN_RUNS) comes from the head's own
    environment, so the submit line stays the README's."""
    runs = tmp_path_factory.mktemp("home") / "activesyn-runs"
    h = Head("jobs", env=dict(_head_env(), ACTIVESYN_RUNS=str(runs)))
    h.runs = runs
    try:
        yield h
    finally:
        h.stop()


def _wait_line() -> str:
    lines = [ln for ln in readme_cluster_lines() if "activesyn_ray.jobs.wait" in ln]
    assert len(lines) == 1, readme_cluster_lines()
    return lines[0]


@pytest.mark.slow
def test_readme_commands_verbatim(head):
    """README: the wait for the fresh head, then the quickstart line, as written; no retries here."""
    wait = head.sh(_wait_line(), timeout=360)
    ready_s = time.monotonic() - head.started
    assert wait.returncode == 0, wait.stdout + wait.stderr
    quickstart = next(ln for ln in readme_cluster_lines() if ln.endswith("jobs/quickstart.yaml"))
    t0 = time.monotonic()
    proc = head.sh(quickstart)
    log = proc.stdout + proc.stderr
    print(f"head ready {ready_s:.0f}s after `ray start`; quickstart job {time.monotonic() - t0:.0f}s; "
          f"rc {proc.returncode}")
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"Job '\S+' succeeded", log), log[-4000:]
    assert "the run reserves 2 CPUs (trainer 1 + scorers 0.75 + teacher 0.25); the cluster " \
           "(1 node) has" in log, log[-4000:]
    runs = list((head.runs / "runs").glob("quickstart-*"))
    assert len(runs) == 1, log[-4000:]
    run_dir = runs[0]
    assert f"using {head.runs / 'runs'}" in log and "runtime_resources" not in str(run_dir)
    assert f"run directory: {run_dir}" in log and "final accuracy:" in log
    store = runstore.RunStore(run_dir)
    assert store.load_state()["done"]
    cfg = load_config(ROOT / "jobs/quickstart.yaml")
    assert len(store.read(runstore.SYNTHETIC)) == cfg.budget.samples
    listing = head.sh("ray job list", timeout=120).stdout
    # the wait's no-op job ran and stays as it ended (no record re-created as FAILED)
    assert "wait-for-head" in listing and "Entrypoint not found" not in listing, listing


@pytest.mark.slow
def test_too_small_cluster_fails_in_one_line_within_seconds(head):
    """Asks for 0.25 CPUs more than the head has: the job ends quickly, with the one line and
    nothing started (no run directory, no placement group waited for)."""
    assert head.sh(_wait_line(), timeout=360).returncode == 0
    cpus = head.cpus()  # what Ray detected
    if cpus < 2:
        pytest.skip(f"Ray detects {cpus:g} CPUs here; the message below needs a trainer of >= 1 CPU")
    before = set((head.runs / "runs").glob("*"))
    trainer = cpus - 1  # trainer (N-1) + scorers 2 x 0.5 + teacher 0.25 = N + 0.25
    line = (f"ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/tiny-cpu.yaml "
            f"--set resources.scorers.num_cpus=0.5 --set resources.trainer.num_cpus={trainer:g}")
    t0 = time.monotonic()
    proc = head.sh(line, timeout=600)
    took = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    expected = (f"error: asks for {cpus + 0.25:g} CPUs: trainer {trainer:g} + scorers 2 x 0.5 + "
                f"teacher 0.25; the cluster has {cpus:g} CPUs; lower "
                f"resources.trainer/scorers/teacher.num_cpus (or teacher.replicas), or start the head "
                f"with --num-cpus {int(cpus) + 1}")
    print(f"too-small job ended after {took:.1f}s (rc {proc.returncode}): {expected}")
    assert proc.returncode != 0 and re.search(r"Job '\S+' failed", log), log[-3000:]
    assert expected in log.splitlines(), log[-3000:]
    assert "bundle_group" not in log and "Traceback" not in log and "could hold" not in log
    assert set((head.runs / "runs").glob("*")) == before  # no run directory
    assert took < 120, took  # Ray's job start + one ray.init; no placement timeout (60 s) in it


# ------------------------------------------------------------------------------ two Rays, one machine
LOCAL_RAY = """
import sys, ray
from activesyn_ray.config import load_config
from activesyn_ray.runtime import init_ray
init_ray(load_config("jobs/quickstart.yaml").resources)   # what `activesyn run` starts
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
print("local ray up", flush=True)
sys.stdin.read()                                         # keep it up until the test is done
"""


def _start_local_ray(log: Path):
    with open(log, "w") as out:  # a file, not a pipe: nobody reads Ray's output after start-up
        proc = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], cwd=ROOT, env=_head_env(),
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while "local ray up" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("first", ["local-run", "head"])
def test_local_run_and_head_on_one_machine(first, tmp_path):
    """`activesyn run`'s own Ray must leave the port a head's job agent listens on (52365 unless
    told otherwise): started first, it took it, and every submission to the head then failed with
    'No available agent'."""
    if _port_taken(AGENT_PORT):
        pytest.skip(f"port {AGENT_PORT} is in use on this machine (another Ray?): the head here must "
                    f"use Ray's default agent port")
    local = head = None
    try:
        if first == "local-run":
            local = _start_local_ray(tmp_path / "local.log")
            head = Head("pair", default_agent_port=True)
        else:
            head = Head("pair", default_agent_port=True)
            assert head.sh("python -m activesyn_ray.jobs.wait --timeout 300", timeout=360).returncode == 0
            local = _start_local_ray(tmp_path / "local.log")
        wait = head.sh("python -m activesyn_ray.jobs.wait --timeout 300", timeout=360)
        assert wait.returncode == 0, wait.stdout + wait.stderr
        proc = head.sh("ray job submit -- python -c 'print(6 * 7)'", timeout=300)
        assert proc.returncode == 0 and "42" in proc.stdout, proc.stdout + proc.stderr
        assert local.poll() is None  # the run's Ray is still up next to the head
    finally:
        if local is not None:
            local.stdin.close()  # it shuts its Ray down and exits
            try:
                local.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(local.pid, signal.SIGKILL)
                local.wait()
        if head is not None:
            head.stop()


def test_local_ray_start_is_tried_again_after_a_startup_timeout(monkeypatch, capfd):
    """Ray's fixed 30 s wait for a new raylet runs out on a loaded machine. The failed try's
    processes (here a stand-in child, as Ray leaves its GCS and raylet) are killed, the start is
    tried again; any other error is raised at once. ray.init is replaced: a real timeout cannot be
    caused on demand."""
    import ray

    from activesyn_ray import runtime

    calls, spawned = [], []

    def fake_init(address, **kwargs):
        calls.append(address)
        if len(calls) == 1:
            spawned.append(subprocess.Popen(["sleep", "60"]))
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    runtime.start_local_ray(num_cpus=2)
    assert calls == ["local", "local"]
    assert spawned[0].poll() is not None  # the failed try's process (a 60 s sleep) is gone
    said = capfd.readouterr()
    assert "starting it again (2/3)" in said.out + said.err

    def other(address, **kwargs):
        calls.append(address)
        raise Exception("some other start-up error")

    monkeypatch.setattr(ray, "init", other)
    with pytest.raises(Exception, match="some other"):
        runtime.start_local_ray(num_cpus=2)
    assert len(calls) == 3  # not retried


def test_job_working_dir_package_is_the_code_without_the_results(tmp_path):
    """`ray job submit --working-dir .` zips the repo as Ray's own packager does (honouring
    .gitignore and .rayignore): the code and job files go, the committed run snapshots in docs/
    (most of the repo's bytes) do not."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "pkg.zip"
    create_package(str(ROOT), target, include_gitignore=True, excludes=[".git", ".venv"])
    names = zipfile.ZipFile(target).namelist()
    assert "activesyn_ray/cli.py" in names and "jobs/quickstart.yaml" in names
    assert not [n for n in names if n.startswith(("docs/", "runs/")) and not n.endswith("/")]
    assert target.stat().st_size < 5e6
