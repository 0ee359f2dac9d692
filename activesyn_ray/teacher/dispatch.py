"""The dispatcher: fans teacher requests out to N replica actors, survives replicas dying.

    d = ActorDispatcher(cfg=cfg, task=task)
    results = d.run(requests, on_result=charge)      # {request_id: Completion}

- Micro-batches: the queue is cut into calls of at most teacher.micro_batch_size requests (vLLM
  batches each call); each replica holds at most MAX_CALLS_PER_REPLICA calls, so the next one is
  waiting when the current finishes.
- Least-loaded: a free call slot goes to the live, started replica with the fewest requests in
  flight (random among ties). One dispatcher sees every in-flight call, so it needs no sampling
  (power-of-two-choices is for many independent routers, as in Ray Serve).
- A replica that dies (RayActorError / ActorDiedError / ActorUnavailableError) is restarted in its
  placement bundle via ActorGroup.restart; its in-flight requests go back to the FRONT of the queue
  and run on whichever replica is free, each at most teacher.max_retries more times. A call that
  fails inside a live replica (engine error) is retried request by request, so one bad prompt does
  not sink its neighbours.
- `on_result` fires exactly once per request id, when its first completion arrives; a late duplicate
  (cannot happen with actors, but cheap to guard) is dropped.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import deque
from typing import Callable

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from activesyn_ray.actors import ActorGroup
from activesyn_ray.teacher.engines import Completion, TeacherError, TeacherRequest
from activesyn_ray.teacher.replica import TeacherReplica

log = logging.getLogger(__name__)

MAX_CALLS_PER_REPLICA = 2
REPLICA_DEATH = (RayActorError, ActorUnavailableError)  # ActorDiedError is a RayActorError


def retryable(batch: list[TeacherRequest], err: Exception, *, max_retries: int,
              stats: dict) -> list[TeacherRequest]:
    """Count one more failed attempt for each request of a failed call; return those that may be
    retried (at most max_retries times), log and count the ones given up on."""
    again = []
    for req in batch:
        req.attempts += 1
        if req.attempts > max_retries:
            stats["failed_requests"] += 1
            log.error("teacher request %s failed %d times, dropped: %s", req.id, req.attempts, err)
        else:
            stats["retried_requests"] += 1
            again.append(req)
    return again


def teacher_resources(cfg):
    """cfg.resources.teacher with one bundle per replica."""
    return cfg.resources.teacher.model_copy(update={"num_workers": cfg.teacher.replicas})


class ActorDispatcher:
    def __init__(self, *, cfg, task=None, rng_seed: int = 0):
        self.cfg = cfg
        self.max_retries = cfg.teacher.max_retries
        self.micro_batch = cfg.teacher.micro_batch_size
        # placement-group names are unique per Ray namespace: a suffix lets two pools coexist
        self.group = ActorGroup(TeacherReplica, name=f"teacher-{uuid.uuid4().hex[:6]}",
                                resources=teacher_resources(cfg),
                                init_kwargs=dict(cfg=cfg, task=task),
                                placement_timeout_s=cfg.resources.placement_timeout_s)
        n = self.group.world_size
        self.generation = [0] * n      # bumped by every restart: stale failures do not restart twice
        self.failures = [0] * n        # consecutive failures of the replica in this slot
        self.dead = [False] * n        # slot given up after max_retries + 1 failed starts in a row
        self.load = [0] * n            # requests in flight per replica
        self.calls = [0] * n
        self.stats = {"replica_deaths": 0, "restarts": 0, "retried_requests": 0,
                      "failed_requests": 0, "calls": 0}
        self._rng = random.Random(rng_seed)
        # Start every replica now: engine errors (missing model, bad endpoint) surface here, and
        # vLLM's start-up (~30-50 s on CPU) is not billed to the first batch.
        try:
            self.info = ray.get([a.ready.remote() for a in self.group.actors])
        except Exception as err:
            self.group.shutdown()
            cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
            raise TeacherError(f"teacher replicas ({cfg.teacher.engine}, model "
                               f"{cfg.teacher.model!r}) failed to start: {cause}") from None
        self._warming: dict[ray.ObjectRef, tuple[int, int]] = {}
        self.ready = [True] * n

    @property
    def num_replicas(self) -> int:
        return self.group.world_size

    @property
    def actors(self) -> list:
        return self.group.actors

    def inflight(self) -> list[int]:
        """Requests in flight per replica (for tests and progress displays)."""
        return list(self.load)

    # ------------------------------------------------------------------------------ replica care
    def _replica_died(self, rank: int, gen: int, err: Exception) -> None:
        if gen != self.generation[rank]:
            return  # already replaced after an earlier failure report
        self.stats["replica_deaths"] += 1
        self.failures[rank] += 1
        self.ready[rank] = False
        if self.failures[rank] > self.max_retries:
            self.dead[rank] = True
            log.error("teacher replica %d failed %d times in a row; giving up on it: %s",
                      rank, self.failures[rank], err)
            return
        log.warning("teacher replica %d died (%s); restarting it", rank, type(err).__name__)
        self.group.restart(rank)
        self.generation[rank] += 1
        self.stats["restarts"] += 1
        self._warming[self.group.actors[rank].ready.remote()] = (rank, self.generation[rank])

    def _pick(self) -> int | None:
        free = [r for r in range(self.num_replicas) if self.ready[r] and not self.dead[r]
                and self.calls[r] < MAX_CALLS_PER_REPLICA]
        if not free:
            return None
        least = min(self.load[r] for r in free)
        return self._rng.choice([r for r in free if self.load[r] == least])

    # ------------------------------------------------------------------------------------ the loop
    def run(self, requests: list[TeacherRequest],
            on_result: Callable[[TeacherRequest, Completion], None] | None = None
            ) -> dict[str, Completion]:
        queue: deque[list[TeacherRequest]] = deque()   # items are ready-made micro-batches
        pending = deque(requests)
        done: dict[str, Completion] = {}
        inflight: dict[ray.ObjectRef, tuple[int, int, list[TeacherRequest]]] = {}

        live = sum(1 for r in range(self.num_replicas) if not self.dead[r]) or 1
        size = max(1, min(self.micro_batch, -(-len(requests) // live)))  # a few requests: spread them

        def next_batch() -> list[TeacherRequest]:
            if queue:
                return queue.popleft()
            return [pending.popleft() for _ in range(min(size, len(pending)))]

        def give_back(batch: list[TeacherRequest], err: Exception, *, split: bool) -> None:
            again = retryable(batch, err, max_retries=self.max_retries, stats=self.stats)
            # retried work goes first; after an engine error, one request per call isolates the bad one
            parts = [[r] for r in again] if split else ([again] if again else [])
            queue.extendleft(reversed(parts))

        while queue or pending or inflight:
            while (queue or pending) and (rank := self._pick()) is not None:
                batch = next_batch()
                ref = self.group.actors[rank].complete.remote(batch)
                inflight[ref] = (rank, self.generation[rank], batch)
                self.load[rank] += len(batch)
                self.calls[rank] += 1
                self.stats["calls"] += 1
            if not inflight and not self._warming:
                if all(self.dead):
                    raise TeacherError("every teacher replica failed repeatedly; see the log above")
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(inflight) + list(self._warming), num_returns=1)
            ref = ready[0]
            if ref in self._warming:
                self._warmed(ref)
                continue
            rank, gen, batch = inflight.pop(ref)
            if gen == self.generation[rank]:
                self.load[rank] -= len(batch)
                self.calls[rank] -= 1
            try:
                results = ray.get(ref)
            except REPLICA_DEATH as err:
                self._replica_died(rank, gen, err)
                give_back(batch, err, split=False)
                continue
            except ray.exceptions.RayTaskError as err:
                give_back(batch, err, split=True)
                continue
            except ray.exceptions.RayError as err:  # worker lost some other way (OOM kill, node gone)
                self._replica_died(rank, gen, err)
                give_back(batch, err, split=False)
                continue
            self.failures[rank] = 0
            for req, comp in zip(batch, results):
                if req.id in done:
                    continue
                done[req.id] = comp
                if on_result is not None:
                    on_result(req, comp)
        return done

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until restarted replicas have started (tests, orderly shutdown)."""
        while self._warming:
            ready, _ = ray.wait(list(self._warming), num_returns=1, timeout=timeout_s)
            if not ready:
                raise TeacherError(f"teacher replicas not started within {timeout_s}s")
            self._warmed(ready[0])

    def _warmed(self, ref) -> None:
        """A restarted replica's ready() came back: put it in service (or count another failure)."""
        rank, gen = self._warming.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as err:  # died again while starting, or its engine failed
            self._replica_died(rank, gen, err)
            return
        if gen == self.generation[rank]:
            self.ready[rank] = True
            self.calls[rank] = self.load[rank] = 0

    def shutdown(self) -> None:
        self.group.shutdown()
