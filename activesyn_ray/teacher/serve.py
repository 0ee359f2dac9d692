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

import itertools
import logging
import time
import zlib

from activesyn_ray.teacher.dispatch import Dispatcher
from activesyn_ray.teacher.engines import Completion, TeacherRequest

log = logging.getLogger(__name__)

APP_NAME = "activesyn-teacher"
MAX_ONGOING = 2
"""Calls per Serve replica (the engine answers one at a time; the next is already waiting)."""


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
        self.timeout_s = cfg.teacher.request_timeout_s
        self._lock = asyncio.Lock()
        self._busy_since: float | None = None
        self._broken: str | None = None

    async def complete(self, requests: list[TeacherRequest]) -> list[Completion]:
        import asyncio

        async with self._lock:  # one batch at a time per engine; the event loop stays free meanwhile
            self._busy_since = time.monotonic()
            try:
                return await asyncio.to_thread(self.engine.complete, requests, top_p=self.top_p)
            except Exception as err:
                # an engine that raised mid-batch may keep the failed batch (vLLM's in-process
                # engine then never finishes another): let the health check replace this replica
                self._broken = f"{type(err).__name__}: {err}"
                raise
            finally:
                self._busy_since = None

    def check_health(self) -> None:
        """Serve calls this every few seconds; raising makes Serve replace the replica."""
        if getattr(self, "engine", None) is None:
            raise RuntimeError("teacher engine is not running")
        if self._broken:
            raise RuntimeError(f"teacher engine failed: {self._broken}")
        if self._busy_since is not None and time.monotonic() - self._busy_since > self.timeout_s:
            raise RuntimeError(f"teacher engine stuck in one call for more than "
                               f"{self.timeout_s:g} s (teacher.request_timeout_s)")


class ServeDispatcher(Dispatcher):
    """The shared dispatcher core over a Serve deployment. Serve routes calls and replaces broken
    replicas; here every call is its own key, with 2 x request_timeout_s (it may wait behind one
    other call on its replica) before it is abandoned and retried."""

    def __init__(self, *, cfg, task=None):
        from ray import serve

        super().__init__(cfg=cfg)
        t, r = cfg.teacher, cfg.resources.teacher
        serve.start(proxy_location="Disabled")
        opts: dict = dict(name="TeacherDeployment", max_ongoing_requests=MAX_ONGOING,
                          health_check_period_s=min(10.0, t.request_timeout_s),
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
        self._numbers = itertools.count()
        self._open = 0
        self.timeout_s = MAX_ONGOING * t.request_timeout_s  # per call, queueing included

    def _live(self) -> int:
        return self.replicas_hint

    def _pick(self):
        # as many calls as the replicas take at once: more would only queue inside Serve
        return next(self._numbers) if self._open < self.replicas_hint * MAX_ONGOING else None

    def _send(self, key, batch: list[TeacherRequest]):
        self._open += 1
        # an ObjectRef (Serve's DeveloperAPI), so the core can wait on Serve and actors alike;
        # blocks only until Serve has assigned a replica
        return self.handle.complete.remote(batch)._to_object_ref_sync(), 0

    def _returned(self, call) -> None:
        self._open -= 1

    # _lost stays a no-op: Serve replaces a dead replica itself, and one whose check_health fails
    # (engine error, or stuck in a call past request_timeout_s)

    def shutdown(self) -> None:
        from ray import serve

        try:
            serve.delete(APP_NAME)
        except Exception as err:  # Serve already gone (Ray shut down)
            log.debug("serve.delete: %s", err)
