"""One actor-group helper for every pool of ranks: trainer ranks, scorer shards, teacher replicas.

    group = ActorGroup(TrainerWorker, name="trainer", resources=cfg.resources.trainer,
                       init_kwargs=dict(cfg=cfg))
    ray.get(group.call("train", data_ref))          # same arguments to every actor
    ray.get(group.call_sharded("score", examples))  # items sliced per actor, results in order

Actors are created with keyword-only constructors `(*, rank, world_size, num_cpus, **init_kwargs)`
inside a placement group sized from config (see placement.py), so the same code fits 2 CPU cores
here and many GPUs on a cluster. Two groups can share one placement group (actor i of each in
bundle i, e.g. scorer i on trainer rank i's GPU):

    pg = placement.reserve_shared("student", [res.trainer, res.scorers], strategy="PACK",
                                  timeout_s=res.placement_timeout_s)
    trainer = ActorGroup(TrainerWorker, name="trainer", resources=res.trainer, placement_group=pg)
    scorers = ActorGroup(ScorerWorker, name="scorers", resources=res.scorers, placement_group=pg)
    ...; trainer.shutdown(); scorers.shutdown(); placement.release(pg)

Calls that must survive a rank that dies or hangs (trainer ranks, scorer shards) go through `run` /
`run_sharded` / `retry`: each call waits at most `call_timeout_s`; a rank that died (RayActorError)
or did not answer in time is restarted -- the whole group when it is a `collective` (DeepSpeed
ranks share one process group, so survivors cannot continue alone) -- `setup(ranks)` re-runs on the
new actors (rendezvous, current adapter), and the call is redone from the start. After
`max_restarts` restarts within one call it raises `ActorGroupError`, one line naming the group, the
rank, the method and what happened.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from activesyn_ray.placement import PlacementError, bundle_for, reserve

log = logging.getLogger("activesyn")

# After a rank's own exception, how long to wait for the call's other ranks: a collective's
# survivors fail (gloo "connection closed") a moment before Ray reports the rank that died.
PEER_GRACE_S = 10.0


def last_line(err: BaseException) -> str:
    """The `Type: message` line that ends a remote traceback (one line for the console)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def one_line(err: BaseException | None) -> str:
    """`Type: message` of an error's cause in one line (a RayTaskError carries the remote
    exception as `cause`, and its text is a whole traceback)."""
    if err is None:
        return "none recorded"
    cause = getattr(err, "cause", None)
    cause = cause if isinstance(cause, BaseException) else err
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"[:300]


class ActorFault(Exception):
    """Ranks of a group died or hung during one call; `ActorGroup.retry` restarts them."""

    def __init__(self, ranks: list[int], method: str, reason: str):
        super().__init__(f"rank {', '.join(map(str, ranks))} {reason} during {method!r}")
        self.ranks, self.method, self.reason = ranks, method, reason


class ActorGroupError(RuntimeError):
    """A group kept failing after its restarts (one line, no Ray traceback)."""


def set_threads(num_cpus: float) -> int:
    """One torch/OpenMP thread per CPU the actor holds: two threads fighting over one busy core
    made training ~10x slower in a probe. An actor that has not imported torch (a procedural
    teacher replica never does) is not made to: torch takes OMP_NUM_THREADS when it is imported."""
    n = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def shard(items: list, n: int) -> list[list]:
    """Contiguous, nearly equal slices (order is preserved when results are concatenated)."""
    q, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


class ActorGroup:
    def __init__(self, actor_cls, *, name: str, resources, init_kwargs: dict[str, Any] | None = None,
                 placement_timeout_s: float = 60, runtime_env: dict | None = None,
                 placement_group: PlacementGroup | None = None, node_wait_s: float | None = None,
                 call_timeout_s: float | None = None, max_restarts: int = 0,
                 collective: bool = False, setup: Callable[[list[int]], None] | None = None,
                 settings_hint: str = ""):
        """placement_group: join this (shared) group, actor i in bundle i, instead of reserving
        one; the caller keeps ownership. node_wait_s: how long to wait for nodes an autoscaler is
        still starting before failing (default placement_timeout_s; without pending nodes a
        request larger than the cluster fails at once).
        For `run`/`retry`: call_timeout_s (None: wait forever), max_restarts per call, collective
        (restart every rank when one fails), setup(ranks) after a restart (may call `gather`),
        settings_hint (the config fields to name in the final error)."""
        self.name = name
        self.call_timeout_s, self.max_restarts = call_timeout_s, max_restarts
        self.collective, self.setup, self.settings_hint = collective, setup, settings_hint
        self.restarts = 0  # over the group's life (tests, reports)
        self.resources = resources
        self.world_size = resources.num_workers
        self.init_kwargs = init_kwargs or {}
        self.runtime_env = runtime_env
        self._cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
        self._owns_pg = placement_group is None
        if placement_group is not None:
            if placement_group.bundle_count < self.world_size:
                raise PlacementError(f"{name}: {self.world_size} actors but the shared placement "
                                     f"group has {placement_group.bundle_count} bundles")
            self.pg = placement_group
        else:
            wait = placement_timeout_s if node_wait_s is None else node_wait_s
            self.pg = reserve(name, [bundle_for(resources)] * self.world_size,
                              strategy=resources.placement_strategy, timeout_s=placement_timeout_s,
                              node_wait_s=wait)
        self.actors = [self._start(rank) for rank in range(self.world_size)]

    def _start(self, rank: int):
        r = self.resources
        opts: dict[str, Any] = dict(num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                                    resources=dict(r.resources) or None, max_concurrency=4)
        if self.pg is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=rank)
        if self.runtime_env:
            opts["runtime_env"] = self.runtime_env
        return self._cls.options(**opts).remote(rank=rank, world_size=self.world_size,
                                                num_cpus=r.num_cpus, **self.init_kwargs)

    def restart(self, rank: int) -> None:
        """Replace a dead actor in the same bundle (teacher replica recovery)."""
        try:
            ray.kill(self.actors[rank], no_restart=True)
        except Exception:
            pass
        self.actors[rank] = self._start(rank)

    # -- calls
    def call(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_sharded(self, method: str, items: list, **kwargs) -> list[ray.ObjectRef]:
        """Each actor gets only its slice (so no node receives the whole batch)."""
        return [getattr(a, method).remote(part, **kwargs)
                for a, part in zip(self.actors, shard(items, self.world_size))]

    def gather_sharded(self, method: str, items: list, **kwargs) -> list:
        """call_sharded, then concatenate the per-actor result lists in order."""
        return [x for part in ray.get(self.call_sharded(method, items, **kwargs)) for x in part]

    # -- calls that survive a dead or hung rank
    def gather(self, method: str, *args, ranks: list[int] | None = None,
               per_rank: list[tuple] | None = None, **kwargs) -> list:
        """`method` on `ranks` (default all; per_rank: each rank's own positional args), results
        in rank order, waiting at most call_timeout_s. Raises ActorFault for ranks that died or did
        not answer in time; an exception of the method itself propagates as Ray raised it, unless
        another rank of the call died (then the failure is that death's fallout)."""
        ranks = list(range(self.world_size)) if ranks is None else list(ranks)
        refs = {getattr(self.actors[r], method).remote(*(per_rank[i] if per_rank else args),
                                                       **kwargs): r
                for i, r in enumerate(ranks)}
        deadline = None if self.call_timeout_s is None else time.monotonic() + self.call_timeout_s
        results, died, own_error, grace_end = {}, [], None, None
        pending = list(refs)
        while pending:
            ends = [t for t in (deadline, grace_end) if t is not None]
            timeout = max(0.0, min(ends) - time.monotonic()) if ends else None
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                break  # the deadline (hung ranks) or the grace after a rank's own error
            for ref in ready:
                try:
                    results[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    if "creation task" in str(err):  # its constructor raised: so would a restart
                        raise ActorGroupError(f"{self.name}: rank {refs[ref]} failed to start: "
                                              f"{last_line(err)}") from None
                    died.append(refs[ref])
                except ray.exceptions.RayTaskError as err:
                    own_error = own_error or err
                    grace_end = grace_end or time.monotonic() + PEER_GRACE_S
            if died and self.collective:
                break  # the whole group restarts; the survivors' answers are void anyway
        if died:
            raise ActorFault(sorted(died), method, "died")
        if own_error is not None:
            raise own_error
        if pending:
            raise ActorFault(sorted(refs[p] for p in pending), method,
                             f"did not answer within {self.call_timeout_s:g} s (hung)")
        return [results[r] for r in ranks]

    def retry(self, fn: Callable[[], Any], *, setup_ranks: list[int] | None = None) -> Any:
        """fn() (a phase made of `gather` calls), redone after restarting the ranks that failed
        (all of them for a collective) and running setup() on them, at most max_restarts times."""
        restarted = setup_ranks
        for attempt in range(self.max_restarts + 1):
            try:
                if restarted is not None and self.setup is not None:
                    self.setup(restarted)
                return fn()
            except ActorFault as fault:
                if attempt == self.max_restarts:
                    hint = f" ({self.settings_hint})" if self.settings_hint else ""
                    raise ActorGroupError(
                        f"{self.name}: {fault} again after {self.max_restarts} restart(s); giving "
                        f"up{hint}") from None
                restarted = list(range(self.world_size)) if self.collective else fault.ranks
                self.restarts += 1
                which = "the whole group" if self.collective else \
                    f"rank {', '.join(map(str, restarted))}"
                msg = (f"{self.name}: {fault}; restarting {which} and redoing the call "
                       f"(restart {attempt + 1} of at most {self.max_restarts})")
                log.warning(msg)
                print(f"[activesyn] {msg}", flush=True)
                for r in restarted:
                    self.restart(r)

    def set_up(self) -> None:
        """setup() on every rank (a group's first set-up, e.g. the trainer's rendezvous), with
        restarts like any call."""
        self.retry(lambda: None, setup_ranks=list(range(self.world_size)))

    def run(self, method: str, *args, **kwargs) -> list:
        """gather() with restart-and-redo."""
        return self.retry(lambda: self.gather(method, *args, **kwargs))

    def run_sharded(self, method: str, items: list, **kwargs) -> list:
        """Each actor gets its slice (as call_sharded); results concatenated in order; a failed
        shard's actor is restarted and the call redone."""
        parts = shard(items, self.world_size)
        out = self.retry(lambda: self.gather(method, per_rank=[(p,) for p in parts], **kwargs))
        return [x for part in out for x in part]

    def pids(self) -> list[int]:
        """Process id of every rank (fault-injection tests)."""
        return ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in self.actors])

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if self.pg is not None and self._owns_pg:
            remove_placement_group(self.pg)
        self.pg = None
