"""Placement groups sized from config, failing fast when the cluster cannot hold them.

A pending placement group waits forever by default; users then stare at a silent job. We check the
request against what the cluster has first (per-bundle fit on some node, and the total), and still
bound the wait, so the error names what was asked and what exists.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group


class PlacementError(RuntimeError):
    pass


def bundle_for(res) -> dict[str, float]:
    """One Ray bundle for one actor of an ActorResources group."""
    b = {"CPU": float(res.num_cpus), "GPU": float(res.num_gpus), **res.resources}
    return {k: v for k, v in b.items() if v > 0}


def _describe(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(d.items())) or "nothing"


def check_fits(name: str, bundles: list[dict[str, float]]) -> None:
    """Raise PlacementError if `bundles` can never be placed on the nodes alive now."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    asked: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            asked[k] = asked.get(k, 0) + v
    for b in bundles:
        if not any(all(node.get(k, 0) >= v for k, v in b.items()) for node in nodes):
            raise PlacementError(
                f"{name}: one actor asks for {{{_describe(b)}}} but no node has that much; nodes have: "
                + "; ".join("{" + _describe({k: v for k, v in n.items() if not k.startswith("node:")
                                             and k not in ("memory", "object_store_memory")}) + "}"
                            for n in nodes))
    short = {k: v for k, v in asked.items() if total.get(k, 0) + 1e-9 < v}
    if short:
        raise PlacementError(
            f"{name}: asks for {_describe(asked)} in all, the cluster has "
            f"{_describe({k: total.get(k, 0) for k in asked})} (lower num_workers/replicas or the "
            f"per-actor resources in the config's resources section)")


def reserve(name: str, bundles: list[dict[str, float]], *, strategy: str,
            timeout_s: float) -> PlacementGroup | None:
    """Create and wait for a placement group; None when the actors ask for no resources at all."""
    if not all(bundles):
        return None  # a bundle may not be empty: zero-resource actors are scheduled freely
    check_fits(name, bundles)
    pg = placement_group(bundles, strategy=strategy, name=f"activesyn-{name}")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise PlacementError(
            f"{name}: placement group {_describe(bundles[0])} x{len(bundles)} ({strategy}) not placed "
            f"within {timeout_s:g}s; free now: {_describe(ray.available_resources())} (other actors "
            f"hold the rest, or {strategy} cannot be satisfied by the node layout)") from None
    return pg
