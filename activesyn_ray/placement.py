"""Placement groups sized from config, failing fast when the cluster cannot hold them.

A pending placement group waits forever by default; users then stare at a silent job. We check the
request against the nodes the cluster has first (how many of the actors each node can hold, under
the group's strategy), and still bound the wait, so the error names what was asked and what exists:

    PlacementError: teacher: 5 actors x {GPU=1, teacher_node=1} (SPREAD) do not fit: the nodes
    hold 4 of them; asked in all GPU=5, teacher_node=5; the cluster has GPU=8, teacher_node=4 ...

A group that fits the cluster but stays pending (other jobs, or the run's own pools, hold what it
needs) fails after the timeout with what is free of what it asks and which placement groups hold
the rest. A whole run is checked against the cluster before its first pool is reserved (fit.py).

Placement is by resources only: a custom resource that only one node type advertises (e.g.
`teacher_node` in cluster.yaml) pins a group to that node type.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

import ray
from ray.util.placement_group import (PlacementGroup, placement_group, placement_group_table,
                                      remove_placement_group)

log = logging.getLogger(__name__)

# Resources a node reports that no actor of ours asks for; left out of messages.
_HIDDEN = ("memory", "object_store_memory")
# What Ray adds for each placement group it places (CPU_group_<pg id>, CPU_group_0_<pg id>,
# bundle_group_0_<pg id>, ...): its own bookkeeping, never something a user could ask for.
_PG_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{16,}$")


class PlacementError(RuntimeError):
    pass


def bundle_for(res) -> dict[str, float]:
    """One Ray bundle for one actor of an ActorResources group."""
    b = {"CPU": float(res.num_cpus), "GPU": float(res.num_gpus), **res.resources}
    return {k: v for k, v in b.items() if v > 0}


def shared_bundle(*groups) -> dict[str, float]:
    """One bundle holding one actor of each group (colocation: e.g. trainer rank i + scorer i)."""
    out: dict[str, float] = {}
    for res in groups:
        for k, v in bundle_for(res).items():
            out[k] = out.get(k, 0.0) + v
    return out


def _describe(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(d.items())) or "nothing"


def visible(resources: dict[str, float]) -> dict[str, float]:
    """The resources a user asks for (CPU, GPU, custom ones): no memory, node ids, nor the
    resources Ray creates for placement groups."""
    return {k: v for k, v in resources.items()
            if k not in _HIDDEN and not k.startswith("node:") and not _PG_RESOURCE.search(k) and v > 0}


def node_capacity(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of `bundle` one node's total resources can hold.

    A fraction of a GPU is carved out of ONE GPU (Ray never splits a request across devices), so
    a node with 8 GPUs holds 8 bundles of GPU=0.75, not 10."""
    cap = math.inf
    for k, v in bundle.items():
        have = node.get(k, 0.0)
        if k == "GPU" and v < 1:
            n = int(have + 1e-9) * int(1 / v + 1e-9)
        else:
            n = int(have / v + 1e-9)
        cap = min(cap, n)
    return 0 if cap is math.inf else int(cap)


def fits(bundles: list[dict[str, float]], strategy: str,
         nodes: list[dict[str, float]]) -> tuple[bool, int]:
    """Whether `bundles` can ever be placed on `nodes` (their totals) under `strategy`; also how many
    of them could be. Exact for identical bundles (what ActorGroup asks for); for mixed bundles a
    check of necessary conditions only, so it never refuses a placement Ray could make."""
    n = len(bundles)
    if all(b == bundles[0] for b in bundles):
        caps = [node_capacity(node, bundles[0]) for node in nodes]
        if strategy == "STRICT_PACK":
            held = max(caps, default=0)
        elif strategy == "STRICT_SPREAD":
            held = sum(1 for c in caps if c >= 1)
        else:  # PACK / SPREAD are preferences: any node may take any number of bundles
            held = sum(caps)
        return held >= n, min(held, n)
    held = sum(1 for b in bundles if any(node_capacity(node, b) >= 1 for node in nodes))
    total: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0.0) + v
    asked = _sum(bundles)
    ok = held == n and all(total.get(k, 0.0) + 1e-9 >= v for k, v in asked.items())
    return ok, held


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def misfit_message(name: str, bundles: list[dict[str, float]], strategy: str,
                   nodes: list[dict[str, float]], *, node_names: list[str] | None = None) -> str:
    """What was asked, what exists, and what to change; `nodes` are per-node total resources."""
    _, held = fits(bundles, strategy, nodes)
    asked = _sum(bundles)
    total = _sum([visible(n) for n in nodes])
    shape = (f"{len(bundles)} actor{'s' * (len(bundles) != 1)} x {{{_describe(bundles[0])}}}"
             if all(b == bundles[0] for b in bundles) else f"{len(bundles)} bundles")
    names = node_names or [f"node {i}" for i in range(len(nodes))]
    per_node = "; ".join(f"{nm} {{{_describe(visible(n))}}}" for nm, n in zip(names, nodes))
    short = [k for k, v in asked.items() if total.get(k, 0.0) + 1e-9 < v]
    why = (f"short of {', '.join(sorted(short))}" if short else
           "enough in total, but no node layout holds them under " + strategy)
    return (f"{name}: {shape} ({strategy}) do not fit: the nodes hold {held} of them ({why}); "
            f"asked in all {_describe(asked)}; the cluster has "
            f"{_describe({k: total.get(k, 0.0) for k in asked})} (nodes: {per_node or 'none'}). "
            f"Lower num_workers / teacher.replicas or the per-actor resources in the config's "
            f"resources section, or add nodes (cluster.yaml min_workers, RayJob replicas).")


def pending_nodes() -> int:
    """Nodes the cluster's autoscaler is launching or setting up now (0 without an autoscaler,
    e.g. a local Ray, or when its status cannot be read)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")  # written by the autoscaler's monitor
        report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
        return len(report.get("pending_nodes") or []) + sum(
            (report.get("pending_launches") or {}).values())
    except Exception:
        return 0


def check_fits(name: str, bundles: list[dict[str, float]], *, strategy: str = "PACK",
               node_wait_s: float = 0) -> None:
    """Raise PlacementError if `bundles` can never be placed on the nodes alive now.

    Fails at once unless an autoscaler reports nodes still starting (just after `ray up`): then it
    waits up to node_wait_s for them to join before deciding."""
    deadline = time.monotonic() + node_wait_s
    announced = False
    while True:
        alive = _alive_nodes()
        nodes = [n["Resources"] for n in alive]
        if fits(bundles, strategy, nodes)[0]:
            return
        if time.monotonic() >= deadline or pending_nodes() == 0:
            break
        if not announced:
            log.warning("%s: the nodes alive cannot hold %s yet; waiting up to %gs for the nodes "
                        "the autoscaler is starting", name, _describe(_sum(bundles)), node_wait_s)
            announced = True
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    names = [("head " if "node:__internal_head__" in n["Resources"] else "")
             + str(n.get("NodeManagerAddress", "?")) for n in alive]
    raise PlacementError(misfit_message(name, bundles, strategy, nodes, node_names=names))


def _held_by_groups(keys: list[str], *, exclude: str = "") -> list[tuple[str, dict[str, float]]]:
    """(name, resources of `keys` it holds) of every placement group placed now."""
    out = []
    for pg_id, info in placement_group_table().items():
        if pg_id == exclude or info.get("state") != "CREATED":
            continue
        held = _sum([{k: v for k, v in b.items() if k in keys}
                     for b in (info.get("bundles") or {}).values()])
        if any(held.values()):
            out.append((info.get("name") or f"unnamed {pg_id[:8]}", held))
    return out


def pending_message(name: str, bundles: list[dict[str, float]], strategy: str, *,
                    timeout_s: float, exclude: str = "") -> str:
    """Why a placement group that fits the cluster on its own is still pending: what it asks, what
    is free of that now, and who holds the rest (placement groups by name, other actors and tasks).
    Never Ray's internal per-group resources, and no claim about what the nodes could hold: the
    run's own pools together may not fit a node layout that each fits alone."""
    asked = _sum(bundles)
    keys = sorted(asked)
    total = _sum([visible(n["Resources"]) for n in _alive_nodes()])
    free = ray.available_resources()
    groups = _held_by_groups(keys, exclude=exclude)
    by_groups = _sum([h for _, h in groups])
    state = ", ".join(f"{k} {free.get(k, 0.0):g} of {total.get(k, 0.0):g}" for k in keys)
    shown = "; ".join(f"{nm} {_describe(h)}" for nm, h in groups[:6]) + \
        (f"; {len(groups) - 6} more" if len(groups) > 6 else "")
    others = {k: total.get(k, 0.0) - free.get(k, 0.0) - by_groups.get(k, 0.0) for k in keys}
    others = {k: v for k, v in others.items() if v > 1e-6}
    held = (f"placement groups hold {_describe(by_groups)} ({shown})" if groups else
            "no placement group holds any")
    held += f", other actors and tasks {_describe(others)}" if others else ""
    shape = (f"{len(bundles)} actor{'s' * (len(bundles) != 1)} x {{{_describe(bundles[0])}}}"
             if all(b == bundles[0] for b in bundles) else f"{len(bundles)} bundles {_describe(asked)}")
    return (f"{name}: {shape} ({strategy}) not placed within {timeout_s:g}s; free now {state}; "
            f"{held}. Wait for what holds them (another job or run) to end, raise "
            f"resources.placement_timeout_s, lower the per-actor resources, or add nodes")


def reserve(name: str, bundles: list[dict[str, float]], *, strategy: str,
            timeout_s: float, node_wait_s: float = 0) -> PlacementGroup | None:
    """Create and wait for a placement group; None when the actors ask for no resources at all."""
    if not all(bundles):
        return None  # a bundle may not be empty: zero-resource actors are scheduled freely
    check_fits(name, bundles, strategy=strategy, node_wait_s=node_wait_s)
    pg = placement_group(bundles, strategy=strategy, name=f"activesyn-{name}")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        msg = pending_message(name, bundles, strategy, timeout_s=timeout_s, exclude=pg.id.hex())
        remove_placement_group(pg)
        raise PlacementError(msg) from None
    return pg


def reserve_shared(name: str, groups: list, *, strategy: str, timeout_s: float,
                   node_wait_s: float = 0) -> PlacementGroup:
    """One placement group whose bundle i holds actor i of EVERY group in `groups` (ActorResources).

    Colocation: pass the result as `placement_group=` to each group's ActorGroup, so trainer rank i
    and scorer i share bundle i and its GPU (trainer.num_gpus + scorers.num_gpus <= 1). Without it,
    Ray packs fractional-GPU bundles onto as few GPUs as it can: two trainer ranks of 0.5 GPU land
    on ONE GPU. The caller owns the group: release it with `release(pg)` after the actor groups."""
    count = max(res.num_workers for res in groups)
    bundles = [shared_bundle(*[res for res in groups if i < res.num_workers]) for i in range(count)]
    pg = reserve(name, bundles, strategy=strategy, timeout_s=timeout_s, node_wait_s=node_wait_s)
    if pg is None:
        raise PlacementError(f"{name}: shared placement needs resources in at least one group")
    return pg


def release(pg: PlacementGroup | None) -> None:
    if pg is not None:
        remove_placement_group(pg)
