"""Starting or joining Ray, with the environment every actor needs (the user's HF settings, shared
caches), and never a secret; and where the output of a run goes.

Workers get the driver's Hugging Face settings (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, ...) so they
resolve models the way the user's shell does. Secrets (HF_TOKEN, API keys) are NOT put into the
runtime_env: Ray records a runtime_env in its GCS, dashboard and job records. A worker reads them
from its own environment: a local Ray inherits the driver's, a cluster node the one `ray start`
ran in.

Console: `route_logs(run_dir)` keeps the terminal to what console.py draws (start-up phases, the
progress bar, one line per iteration, the summary) and `[activesyn]` lines of the actors;
everything else -- Ray's own notices, transformers' loading and writing bars, DeepSpeed's warnings,
any worker print -- is appended to RUN/run.log. Inside `library_output()` the driver's own
sys.stdout/sys.stderr are that log too (a library prints before its logger can be routed, e.g.
DeepSpeed's accelerator warning at import), and the console writes to `console.console_stream()`,
the stream the terminal had. Output from before the run directory exists (building a model on first
use) is held and written to run.log once it does. `--verbose` leaves Ray's default printing alone
(all of it on the console, as before).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path

import ray

from activesyn_ray import console

CONSOLE_MARK = "[activesyn]"  # worker lines carrying it stay on the console
# Loggers of the libraries whose chatter belongs in run.log (driver side).
CHATTY_LOGGERS = ("ray", "transformers", "deepspeed", "DeepSpeed", "datasets", "huggingface_hub",
                  "peft", "vllm", "torch", "accelerate", "urllib3", "filelock", "py.warnings")

# Set for every worker: tokenizers' fork warning is noise inside actors.
FIXED_ENV = {"TOKENIZERS_PARALLELISM": "false"}
# Caches shared by all actors of a machine.
CACHE_KEYS = ("ACTIVESYN_CACHE", "ACTIVESYN_WHEELS", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT",
              "ACTIVESYN_TEACHER_CACHE")
# Settings read by huggingface_hub / transformers / datasets.
HF_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")


def is_secret(name: str) -> bool:
    return any(w in name.upper() for w in SECRET_WORDS)


def worker_env(resources_cfg=None) -> dict[str, str]:
    """env_vars of the runtime_env: caches + the user's HF_* settings, minus secrets."""
    env = dict(FIXED_ENV)
    for key, value in os.environ.items():
        if (key in CACHE_KEYS or key.startswith(HF_PREFIXES)) and not is_secret(key):
            env[key] = value
    cache = getattr(resources_cfg, "model_cache", None)
    if cache:
        env["HF_HUB_CACHE"] = os.path.expanduser(cache)
    return env


class _RunLog:
    """RUN/run.log: library log records and worker output lines, appended, one writer lock."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", buffering=1)  # line-buffered: readable while the run goes on
        self.lock = threading.Lock()
        self.handler = logging.StreamHandler(self.file)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def write_worker_lines(self, data: dict) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
        with self.lock:
            for line in data.get("lines", []):
                self.file.write(prefix + line + "\n")


_run_log: _RunLog | None = None


class _LibraryStream(io.TextIOBase):
    """sys.stdout/sys.stderr of the driver inside library_output(): the current run.log, or held in
    memory until a run directory exists. One object for the whole process, so a handler that
    bound it (DeepSpeed's, at import) keeps writing to whichever run.log is current."""

    def __init__(self):
        self.pending: list[str] = []
        self.hold = False  # a run directory is being made: its output is not the last run's

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # progress bars then draw one final line, not a redraw per step
        return False

    def write(self, text: str) -> int:
        if not self.hold and _run_log is not None and not _run_log.file.closed:
            with _run_log.lock:
                _run_log.file.write(text)
        else:
            self.pending.append(text)
        return len(text)

    def fileno(self) -> int:
        if _run_log is None or _run_log.file.closed:
            raise io.UnsupportedOperation("no run.log yet")
        return _run_log.file.fileno()


_LIBRARY = _LibraryStream()
VERBOSE = False  # --verbose: library output stays on the console (set by the CLI and route_logs)


@contextlib.contextmanager
def library_output(*, hold: bool = False):
    """Inside: whatever the driver's libraries print goes to run.log (see _LibraryStream); the
    console writes to console.console_stream(). hold: keep it in memory for the run directory
    being made (keep_library_output). A no-op under --verbose. Left before an exception goes on,
    so a traceback reaches the terminal."""
    if VERBOSE:
        yield
        return
    was, _LIBRARY.hold = _LIBRARY.hold, hold
    try:
        with console.holding_terminal(), contextlib.redirect_stdout(_LIBRARY), \
                contextlib.redirect_stderr(_LIBRARY):
            yield
    finally:
        _LIBRARY.hold = was


def keep_library_output(run_dir: str | Path) -> None:
    """Write what was held before the run directory existed into RUN/run.log."""
    if _LIBRARY.pending:
        with open(Path(run_dir) / "run.log", "a") as f:
            f.write("".join(_LIBRARY.pending))
        _LIBRARY.pending.clear()


def route_logs(run_dir: str | Path, *, verbose: bool = False) -> Path:
    """Send library chatter of this process and, once Ray is up, of every worker to RUN/run.log;
    call before init_ray. Returns the log's path. verbose=True: log to run.log AND keep the console."""
    global _run_log, VERBOSE
    VERBOSE = verbose
    keep_library_output(run_dir)
    path = Path(run_dir) / "run.log"
    old, _run_log = _run_log, _RunLog(path)
    root = logging.getLogger()
    if old is not None:  # a second run in this process (experiment): move to its run.log
        for name in ("", *CHATTY_LOGGERS):
            logging.getLogger(name).removeHandler(old.handler)
        old.file.close()
    root.addHandler(_run_log.handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    if not verbose:
        logging.captureWarnings(True)  # warnings.warn(...) -> the py.warnings logger -> run.log
        import ray._private.log  # noqa: F401 -- Ray adds its console handler on import; replace it

        for name in CHATTY_LOGGERS:
            lg = logging.getLogger(name)
            lg.handlers = [_run_log.handler]
            lg.propagate = False
        if ray.is_initialized():
            _route_worker_output()
    _run_log.verbose = verbose
    return path


def _route_worker_output() -> None:
    """Replace Ray's driver-side printer of worker stdout/stderr (ray.init(log_to_driver=True))
    with one that keeps `[activesyn]` lines on the console (above the progress bar) and writes all
    other lines to run.log. Ray has no public hook for this; if its internals move, Ray's printer
    stays (and writes into run.log inside library_output())."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC
    except ImportError:
        return
    def handle(data: dict) -> None:
        # A tqdm_ray bar of some library inside an actor: neither for the console (the driver
        # draws the one bar, console.py) nor readable in a log.
        lines = [ln for ln in data.get("lines", []) if RAY_TQDM_MAGIC not in ln]
        mine = [ln[ln.index(CONSOLE_MARK):] for ln in lines if CONSOLE_MARK in ln]
        for line in mine:
            console.say(line)
        others = lines
        if data.get("pid") == "autoscaler":  # its periodic status dump: keep the events, as Ray does
            others = list(ray_worker.filter_autoscaler_events(others))
        if others and _run_log is not None:  # the current run's log (experiments switch runs)
            _run_log.write_worker_lines(dict(data, lines=others))

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", handle)


@contextlib.contextmanager
def _agent_port_chosen_by_os():
    """While a local Ray starts: its dashboard agent listens on a port the OS picks, not on Ray's
    fixed default 52365.

    A `ray start --head` on the same machine needs 52365 for its job agent. Whichever Ray starts
    second gets an agent without its HTTP server ("address already in use"), and under a head that
    means every `ray job submit` fails with "No available agent". ray.init() has no argument for
    this port; the RayParams it builds take 0 (any free port), so it is built with 0 here. If Ray's
    internals move, the local Ray starts as before (on 52365)."""
    try:
        from ray._private import parameter

        base = parameter.RayParams
    except (ImportError, AttributeError):
        yield
        return

    class RayParams(base):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = base


_started_local = False


def started_local_ray() -> bool:
    """Whether init_ray started this process's Ray (sized by resources.local_num_cpus) rather than
    joining a cluster."""
    return _started_local and ray.is_initialized()


# Ray waits a fixed 30 s for a new raylet to register with its GCS; on a loaded machine that is
# sometimes not enough ("The current node timed out during startup"). A fresh try usually is.
LOCAL_START_TRIES = 3


def start_local_ray(tries: int = LOCAL_START_TRIES, **kwargs) -> None:
    """ray.init(address="local"), tried again when the node times out during startup. A failed
    try leaves its GCS and raylet running (the half-built node is dropped), so they are killed
    first: every process this driver started during that try."""
    import psutil

    me = psutil.Process()
    for attempt in range(1, tries + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as err:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(err) or attempt == tries:
                raise
            leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
            for p in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(leftovers, timeout=10)
            with contextlib.suppress(Exception):
                ray.shutdown()
            console.say(f"the local Ray timed out during startup (a loaded machine?); "
                         f"starting it again ({attempt + 1}/{tries})")


def init_ray(resources_cfg, *, log_to_driver: bool = True) -> None:
    """Join RAY_ADDRESS / resources.ray_address if given (e.g. under `ray job submit`), else start a
    local Ray sized by resources.local_num_cpus."""
    if ray.is_initialized():
        return
    env = worker_env(resources_cfg)
    if "HF_HUB_CACHE" in env:  # resources.model_cache: the driver resolves models there too
        os.environ["HF_HUB_CACHE"] = env["HF_HUB_CACHE"]
    address = resources_cfg.ray_address or os.environ.get("RAY_ADDRESS")
    global _started_local
    _started_local = not address
    kwargs = dict(runtime_env={"env_vars": env}, log_to_driver=log_to_driver,
                  include_dashboard=False if not address else None)
    if address:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if v is not None})
    else:
        # address="local": always a fresh local Ray; a bare ray.init() would silently join any
        # `ray start` head already running on this machine.
        with _agent_port_chosen_by_os():
            start_local_ray(num_cpus=resources_cfg.local_num_cpus, **kwargs)
    if _run_log is not None and not getattr(_run_log, "verbose", False) and log_to_driver:
        _route_worker_output()
