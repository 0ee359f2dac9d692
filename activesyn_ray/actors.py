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
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from activesyn_ray.placement import PlacementError, bundle_for, reserve


def set_threads(num_cpus: float) -> int:
    """One torch/OpenMP thread per CPU the actor holds: two threads fighting over one busy core
    made training ~10x slower in a probe."""
    import torch

    n = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
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
                 placement_group: PlacementGroup | None = None, node_wait_s: float | None = None):
        """placement_group: join this (shared) group, actor i in bundle i, instead of reserving
        one; the caller keeps ownership. node_wait_s: how long to wait for nodes an autoscaler is
        still starting before failing (default placement_timeout_s; without pending nodes a
        request larger than the cluster fails at once)."""
        self.name = name
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
