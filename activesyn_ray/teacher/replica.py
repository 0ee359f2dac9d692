"""One teacher replica: a thin Ray actor around one engine (the dispatcher does the scheduling).

Created by `ActorGroup(TeacherReplica, ...)` with the usual keyword-only constructor. Calls are
serialised by a lock: ActorGroup allows a few concurrent calls per actor so the next micro-batch is
already queued when one finishes, but an engine (vLLM's LLM, HF generate) runs one batch at a time.
"""

from __future__ import annotations

import os
import socket
import threading

from activesyn_ray.actors import set_threads
from activesyn_ray.teacher.engines import Completion, TeacherRequest, build_engine


class TeacherReplica:
    def __init__(self, *, rank: int, world_size: int, num_cpus: float, cfg, task=None):
        set_threads(num_cpus)
        self.rank = rank
        self.top_p = cfg.teacher.top_p
        self.engine = build_engine(cfg, task=task, num_cpus=num_cpus, rank=rank)
        self._lock = threading.Lock()

    def ready(self) -> dict:
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(),
                "engine": self.engine.name, "context_len": self.engine.context_len}

    def complete(self, requests: list[TeacherRequest]) -> list[Completion]:
        with self._lock:
            return self.engine.complete(requests, top_p=self.top_p)

    def peak_rss(self) -> dict:
        from activesyn_ray.devices import peak_rss_bytes

        return {"engine": self.engine.name, "peak_rss_bytes": peak_rss_bytes()}

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [self.engine.count_tokens(t) for t in texts]
