"""The dispatchers: fan teacher requests out to replicas, survive replicas dying or hanging.

    d = ActorDispatcher(cfg=cfg, task=task)          # or ServeDispatcher (teacher.serve.enabled)
    results = d.run(requests, on_result=charge)      # {request_id: Completion}

Both share one core, `Dispatcher.run`; they differ only in where a call goes and what happens to
a replica that failed (the `_pick/_send/_lost` hooks):

- Micro-batches: the queue is cut into calls of at most teacher.micro_batch_size requests (vLLM
  batches each call); fewer requests than replicas x micro_batch are spread evenly.
- Retries: a call whose replica died, or hung, goes back to the FRONT of the queue whole and runs
  wherever there is room; a call that failed inside a live replica (engine error, logged with its
  cause) is retried request by request, so one bad prompt does not sink its neighbours, and that
  replica is replaced too (vLLM's in-process engine keeps a batch that raised mid-step and never
  finishes another call: the "hangs forever" of issue 12); that replica's other calls go back
  without costing their requests an attempt (they were not at fault). Each request is tried at most
  1 + teacher.max_retries times; then it is dropped and counted (never charged). A run() in which
  no request succeeded raises TeacherError with the last cause.
- Hangs: a replica with calls in flight that has answered none of them for
  teacher.request_timeout_s is taken for hung: it is killed and replaced like a dead one, and its
  calls are retried elsewhere. Its late answers, if any, are never read.
- First result wins: `on_result` fires exactly once per request id, when its first completion
  arrives; so a request is charged once however often it was retried.
- Silence is an error: if every replica is gone for good, `run` raises TeacherError.

ActorDispatcher: Ray actors (ActorGroup of TeacherReplica), least-loaded, at most
MAX_CALLS_PER_REPLICA calls per replica (so requests in flight per replica are bounded by
MAX_CALLS_PER_REPLICA x micro_batch_size however long the queue), a dead or hung replica restarted
in its placement bundle. ServeDispatcher (serve.py): a Ray Serve deployment; Serve routes and
replaces replicas (its health check fails on a replica stuck in one call past the timeout).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from activesyn_ray.actors import ActorGroup, one_line
from activesyn_ray.teacher.engines import Completion, TeacherError, TeacherRequest
from activesyn_ray.teacher.replica import TeacherReplica

log = logging.getLogger(__name__)

MAX_CALLS_PER_REPLICA = 2
REPLICA_DEATH = (RayActorError, ActorUnavailableError)  # ActorDiedError is a RayActorError
POLL_S = 1.0
"""How often the loop wakes up without an answer to look for hung replicas."""


class ReplicaHung(TeacherError):
    """A replica answered none of its calls within teacher.request_timeout_s."""


@dataclass
class _Call:
    key: Hashable              # where it went: a replica rank (actors) or the call itself (Serve)
    generation: int            # the replica's generation when sent: stale news is ignored
    batch: list[TeacherRequest]
    sent: float = field(default_factory=time.monotonic)


class Dispatcher:
    """The shared core. Subclasses provide the transport hooks below."""

    stats: dict

    def __init__(self, *, cfg):
        t = cfg.teacher
        self.max_retries = t.max_retries
        self.micro_batch = t.micro_batch_size
        self.timeout_s = t.request_timeout_s
        # hears (queued, in_flight) request counts as they change (the loop's Ray metrics)
        self.on_load: Callable[[int, int], None] | None = None
        self.stats = {"replica_deaths": 0, "replica_hangs": 0, "engine_errors": 0, "restarts": 0,
                      "retried_requests": 0, "failed_requests": 0, "calls": 0}

    # ------------------------------------------------------------------------- transport hooks
    def _live(self) -> int:
        """Replicas that may still answer (for sizing micro-batches)."""
        raise NotImplementedError

    def _pick(self) -> Hashable | None:
        """Where the next call may go now, or None (no room)."""
        raise NotImplementedError

    def _send(self, key: Hashable, batch: list[TeacherRequest]) -> tuple[ray.ObjectRef, int]:
        """Start the call; return its ref and the replica's generation."""
        raise NotImplementedError

    def _returned(self, call: _Call) -> None:
        """Bookkeeping when a call ends in any way (its slot is free again)."""

    def _lost(self, key: Hashable, generation: int, err: Exception) -> None:
        """The replica behind `key` died or hung: replace it (or leave that to Serve)."""

    def _succeeded(self, key: Hashable) -> None:
        """A call came back from `key`: its replica works."""

    def _background(self) -> dict[ray.ObjectRef, Callable[[ray.ObjectRef], None]]:
        """Other refs to wait on (restarted replicas starting) and what to do when each is ready."""
        return {}

    def _check_alive(self) -> None:
        """Raise TeacherError when no replica can ever answer again."""

    # ------------------------------------------------------------------------------------ core
    def run(self, requests: list[TeacherRequest],
            on_result: Callable[[TeacherRequest, Completion], None] | None = None
            ) -> dict[str, Completion]:
        queue: deque[list[TeacherRequest]] = deque()   # ready-made micro-batches (retries first)
        pending = deque(requests)
        done: dict[str, Completion] = {}
        inflight: dict[ray.ObjectRef, _Call] = {}
        progress: dict[Hashable, float] = {}            # key -> last time it started or answered
        last_err: Exception | None = None
        size = max(1, min(self.micro_batch, -(-len(requests) // max(1, self._live()))))

        def next_batch() -> list[TeacherRequest]:
            if queue:
                return queue.popleft()
            return [pending.popleft() for _ in range(min(size, len(pending)))]

        def give_back(batch: list[TeacherRequest], err: Exception, *, split: bool,
                      charge: bool = True) -> None:
            again = self._retryable(batch, err) if charge else batch
            parts = [[r] for r in again] if split else ([again] if again else [])
            queue.extendleft(reversed(parts))

        def fail_key(key, generation: int, err: Exception, *, charge: bool = True) -> None:
            """Every call of a dead or hung replica goes back; its late answers are never read.
            charge=False: the replica is retired for another call's engine error, so its other
            calls were not at fault and cost their requests no attempt."""
            for ref in [r for r, c in inflight.items()
                        if c.key == key and c.generation == generation]:
                call = inflight.pop(ref)
                self._returned(call)
                give_back(call.batch, err, split=False, charge=charge)
            progress.pop(key, None)
            self._lost(key, generation, err)

        def report_load() -> None:
            if self.on_load is not None:
                self.on_load(len(pending) + sum(map(len, queue)),
                             sum(len(c.batch) for c in inflight.values()))

        while queue or pending or inflight:
            while (queue or pending) and (key := self._pick()) is not None:
                batch = next_batch()
                ref, gen = self._send(key, batch)
                if not any(c.key == key for c in inflight.values()):
                    progress[key] = time.monotonic()
                inflight[ref] = _Call(key, gen, batch)
                self.stats["calls"] += 1
            report_load()
            background = self._background()
            if not inflight and not background:
                self._check_alive()
                time.sleep(0.05)
                continue
            # hung replicas are looked for on every pass: a busy healthy one must not hide them
            now = time.monotonic()
            for key, since in list(progress.items()):
                if now - since > self.timeout_s:
                    self.stats["replica_hangs"] += 1
                    gen = next(c.generation for c in inflight.values() if c.key == key)
                    log.warning("teacher replica %s answered nothing for %.0f s "
                                "(teacher.request_timeout_s=%g): taken as hung, replaced, its "
                                "requests retried", key, now - since, self.timeout_s)
                    last_err = ReplicaHung(f"no answer in {self.timeout_s:g} s")
                    fail_key(key, gen, last_err)
            if not inflight and not background:
                continue
            ready, _ = ray.wait(list(inflight) + list(background), num_returns=1, timeout=POLL_S)
            if not ready:
                continue
            ref = ready[0]
            if ref in background:
                background[ref](ref)
                continue
            call = inflight.pop(ref)
            self._returned(call)
            try:
                results = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the engine raised inside a live replica
                last_err = err
                self.stats["engine_errors"] += 1
                log.warning("teacher engine error on replica %s (%d requests go back, one per "
                            "call): %s", call.key, len(call.batch), one_line(err))
                give_back(call.batch, err, split=True)
                # vLLM's in-process engine keeps a batch that raised mid-step and then never
                # finishes another call: an engine that raised is not trusted with more work
                fail_key(call.key, call.generation, err, charge=False)
                continue
            except ray.exceptions.RayError as err:  # died, unreachable, OOM-killed, node gone
                last_err = err
                self.stats["replica_deaths"] += 1
                give_back(call.batch, err, split=False)
                fail_key(call.key, call.generation, err)
                continue
            self._succeeded(call.key)
            if any(c.key == call.key for c in inflight.values()):
                progress[call.key] = time.monotonic()
            else:
                progress.pop(call.key, None)
            for req, comp in zip(call.batch, results):
                if req.id in done:
                    continue
                done[req.id] = comp
                if on_result is not None:
                    on_result(req, comp)
        report_load()
        if requests and not done:
            raise TeacherError(f"no teacher request succeeded ({len(requests)} requests, each "
                               f"tried up to {1 + self.max_retries} times); last error: "
                               f"{one_line(last_err)}")
        return done

    def _retryable(self, batch: list[TeacherRequest], err: Exception) -> list[TeacherRequest]:
        """Count one more failed attempt for each request of a failed call; return those that may
        be retried (at most max_retries times), log and count the ones given up on."""
        again = []
        for req in batch:
            req.attempts += 1
            if req.attempts > self.max_retries:
                self.stats["failed_requests"] += 1
                log.error("teacher request %s failed %d times, dropped: %s", req.id, req.attempts,
                          one_line(err))
            else:
                self.stats["retried_requests"] += 1
                again.append(req)
        return again


def teacher_resources(cfg):
    """cfg.resources.teacher with one bundle per replica."""
    return cfg.resources.teacher.model_copy(update={"num_workers": cfg.teacher.replicas})


class ActorDispatcher(Dispatcher):
    def __init__(self, *, cfg, task=None, rng_seed: int = 0):
        super().__init__(cfg=cfg)
        self.cfg = cfg
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

    # ----------------------------------------------------------------------------- the hooks
    def _live(self) -> int:
        return sum(1 for r in range(self.num_replicas) if not self.dead[r])

    def _pick(self) -> int | None:
        free = [r for r in range(self.num_replicas) if self.ready[r] and not self.dead[r]
                and self.calls[r] < MAX_CALLS_PER_REPLICA]
        if not free:
            return None
        least = min(self.load[r] for r in free)
        return self._rng.choice([r for r in free if self.load[r] == least])

    def _send(self, rank: int, batch: list[TeacherRequest]):
        self.load[rank] += len(batch)
        self.calls[rank] += 1
        return self.group.actors[rank].complete.remote(batch), self.generation[rank]

    def _returned(self, call: _Call) -> None:
        if call.generation == self.generation[call.key]:
            self.load[call.key] -= len(call.batch)
            self.calls[call.key] -= 1

    def _succeeded(self, rank: int) -> None:
        self.failures[rank] = 0

    def _lost(self, rank: int, gen: int, err: Exception) -> None:
        if gen != self.generation[rank]:
            return  # already replaced after an earlier failure report
        if not isinstance(err, ray.exceptions.RayTaskError):
            self.failures[rank] += 1  # an engine error is the request's fault as often as not
        self.ready[rank] = False
        if self.failures[rank] > self.max_retries:
            self.dead[rank] = True
            log.error("teacher replica %d failed %d times in a row; giving up on it: %s",
                      rank, self.failures[rank], err)
            return
        what = {ReplicaHung: "hung", ray.exceptions.RayTaskError: "had an engine error"}
        log.warning("teacher replica %d %s (%s); restarting it", rank,
                    next((w for t, w in what.items() if isinstance(err, t)), "died"),
                    type(err).__name__)
        self.group.restart(rank)  # kills the old actor first: a hung engine stops computing
        self.generation[rank] += 1
        self.calls[rank] = self.load[rank] = 0
        self.stats["restarts"] += 1
        self._warming[self.group.actors[rank].ready.remote()] = (rank, self.generation[rank])

    def _background(self):
        return {ref: self._warmed for ref in self._warming}

    def _check_alive(self) -> None:
        if all(self.dead):
            raise TeacherError("every teacher replica failed repeatedly; see the log above")

    # ------------------------------------------------------------------------------- restarts
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
            self._lost(rank, gen, err)
            return
        if gen == self.generation[rank]:
            self.ready[rank] = True
            self.calls[rank] = self.load[rank] = 0

    def shutdown(self) -> None:
        self.group.shutdown()

