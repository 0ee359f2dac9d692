"""Placement groups sized from config, failing fast when the cluster cannot hold them.

A pending placement group waits forever by default; users then stare at a silent job. We check the
request against the nodes the cluster has first (how many of the actors each node can hold, under
the group's strategy), and still bound the wait, so the error names what was asked and what exists:

    PlacementError: teacher: 5 actors x {GPU=1, teacher_node=1} (SPREAD) do not fit: the nodes
    hold 4 of them; asked in all GPU=5, teacher_node=5; the cluster has GPU=8, teacher_node=4 ...

Placement is by resources only: a custom resource that only one node type advertises (e.g.
`teacher_node` in cluster.yaml) pins a group to that node type.
"""

from __future__ import annotations

import json
import logging
import math
import time

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

log = logging.getLogger(__name__)

# Resources a node reports that no actor of ours asks for; left out of messages.
_HIDDEN = ("memory", "object_store_memory")


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


def _visible(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if k not in _HIDDEN and not k.startswith("node:") and v > 0}


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
    total = _sum([_visible(n) for n in nodes])
    shape = (f"{len(bundles)} actor{'s' * (len(bundles) != 1)} x {{{_describe(bundles[0])}}}"
             if all(b == bundles[0] for b in bundles) else f"{len(bundles)} bundles")
    names = node_names or [f"node {i}" for i in range(len(nodes))]
    per_node = "; ".join(f"{nm} {{{_describe(_visible(n))}}}" for nm, n in zip(names, nodes))
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
        remove_placement_group(pg)
        raise PlacementError(
            f"{name}: placement group {_describe(bundles[0])} x{len(bundles)} ({strategy}) not placed "
            f"within {timeout_s:g}s although the nodes could hold it; free now: "
            f"{_describe(_visible(ray.available_resources()))} (other actors hold the rest)") from None
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
