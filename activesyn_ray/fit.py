"""Does a run fit the Ray cluster it joins? Asked once, before any actor starts, answered in one line.

Every pool of a run keeps its placement group for the whole run (trainer ranks, scorer shards,
teacher replicas, a separate judge's replicas, the coordinator's CPUs), so their reservations add
up, although the loop's phases run one after another: logical CPUs here are reservations, not
concurrent load. Reserving pool after pool, the last one to ask would only fail after
`placement_timeout_s`; here the sum is compared with the cluster first:

    FitError: asks for 2.25 CPUs: trainer 1 + scorers 2 x 0.5 + teacher 0.25; the cluster has 2;
    lower resources.trainer/scorers/teacher.num_cpus, or start the head with --num-cpus 3

Both checks (the totals, and each pool's node layout via `placement.fits`) are necessary
conditions, so a run Ray could place is never refused. Resources other jobs hold right now are not
counted against the run: they may be released; waiting for them is `placement_timeout_s`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from activesyn_ray.placement import (PlacementError, bundle_for, fits, misfit_message, shared_bundle,
                                     visible)

EPS = 1e-6  # Ray accounts resources in units of 1e-4


class FitError(PlacementError):
    """The run asks for more than the cluster has (one line: demand against capacity)."""


@dataclass(frozen=True)
class Part:
    """`count` actors of one pool, each asking for `bundle`; `setting` is its config group."""
    name: str
    setting: str
    count: int
    bundle: dict[str, float]


@dataclass(frozen=True)
class Group:
    """One placement group as the run will ask for it (bundle i may hold actors of several parts)."""
    name: str
    bundles: list[dict[str, float]]
    strategy: str


def _judge_pool(cfg) -> bool:
    """A separate judge engine starts its own replicas (TeacherPool.judge_backend), only for a
    strategy that judges."""
    from activesyn_ray.selection import STRATEGIES
    from activesyn_ray.selection.base import JUDGE

    t = cfg.teacher
    return (t.judge_engine is not None or t.judge_model is not None) and \
        JUDGE in STRATEGIES[cfg.selection.strategy].needs


def _teacher_count(cfg) -> int:
    t = cfg.teacher
    if t.serve.enabled and t.serve.autoscaling:  # Serve starts at initial_replicas / min_replicas
        auto = t.serve.autoscaling
        return int(auto.get("initial_replicas") or auto.get("min_replicas") or 1)
    return t.replicas


def demand(cfg) -> tuple[list[Part], list[Group]]:
    """What the run reserves, per pool (for the message) and per placement group (for the layout
    check), as StudentPool, TeacherPool and run_loop will ask for it."""
    res = cfg.resources
    trainer = Part("trainer", "resources.trainer", res.trainer.num_workers, bundle_for(res.trainer))
    scorers = Part("scorers", "resources.scorers", res.scorers.num_workers, bundle_for(res.scorers))
    teacher_bundle = bundle_for(res.teacher)
    parts = [trainer, scorers, Part("teacher", "resources.teacher", _teacher_count(cfg), teacher_bundle)]
    if _judge_pool(cfg):
        parts.append(Part("judge", "resources.teacher", cfg.teacher.replicas, teacher_bundle))
    if res.coordinator_num_cpus > 0:
        parts.append(Part("coordinator", "resources.coordinator_num_cpus", 1,
                          {"CPU": res.coordinator_num_cpus}))
    if res.colocate_scorers:  # bundle i = trainer rank i + scorer i (placement.reserve_shared)
        n = max(trainer.count, scorers.count)
        groups = [Group("student", [shared_bundle(*[r for r in (res.trainer, res.scorers)
                                                    if i < r.num_workers]) for i in range(n)],
                        res.trainer.placement_strategy)]
    else:
        groups = [Group("trainer", [trainer.bundle] * trainer.count, res.trainer.placement_strategy),
                  Group("scorers", [scorers.bundle] * scorers.count, res.scorers.placement_strategy)]
    for p in parts[2:]:
        strategy = res.teacher.placement_strategy if p.setting == "resources.teacher" else "PACK"
        groups.append(Group(p.name, [p.bundle] * p.count, strategy))
    return parts, [g for g in groups if g.bundles and all(g.bundles)]


def totals(parts: list[Part]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in parts:
        for k, v in p.bundle.items():
            out[k] = out.get(k, 0.0) + p.count * v
    return out


def _num(v: float) -> str:
    return f"{v:.4g}"


def _unit(key: str, v: float) -> str:
    """`2.25 CPUs`, `1 GPU`, `teacher_node=5`."""
    if key in ("CPU", "GPU"):
        return f"{_num(v)} {key}{'s' if v != 1 else ''}"
    return f"{key}={_num(v)}"


def _term(p: Part, key: str) -> str:
    v = p.bundle[key]
    return f"{p.name} {_num(v)}" if p.count == 1 else f"{p.name} {p.count} x {_num(v)}"


def _settings(parts: list[Part], key: str) -> str:
    """The config fields to lower, e.g. resources.trainer/scorers/teacher.num_cpus."""
    field = {"CPU": "num_cpus", "GPU": "num_gpus"}.get(key, f"resources.{key}")
    groups = []
    for p in parts:
        if key in p.bundle and p.setting not in groups:
            groups.append(p.setting)
    if groups == ["resources.coordinator_num_cpus"]:
        return groups[0]
    named = [g.removeprefix("resources.") for g in groups if g != "resources.coordinator_num_cpus"]
    out = f"resources.{'/'.join(named)}.{field}"
    if "resources.coordinator_num_cpus" in groups:
        out += " or resources.coordinator_num_cpus"
    if any(p.name == "teacher" and key in p.bundle for p in parts):
        out += " (or teacher.replicas)"
    return out


def short_message(parts: list[Part], capacity: dict[str, float], *, n_nodes: int,
                  local: bool = False) -> str | None:
    """One line per resource the run asks more of than the cluster has, joined; None if it fits.
    local: the run's own Ray (sized by resources.local_num_cpus), not a cluster it joined."""
    asked = totals(parts)
    lines = []
    for key in sorted(asked, key=lambda k: (k not in ("CPU", "GPU"), k)):
        need, have = asked[key], capacity.get(key, 0.0)
        if need <= have + EPS:
            continue
        terms = " + ".join(_term(p, key) for p in parts if key in p.bundle)
        if key == "CPU" and local:
            more = f"set resources.local_num_cpus: {math.ceil(need - EPS)}"
        elif key == "CPU" and n_nodes == 1:
            more = f"start the head with --num-cpus {math.ceil(need - EPS)}"
        elif key in ("CPU", "GPU"):
            more = f"add nodes with {_num(need - have)} more {key}s"
        else:
            more = f"add nodes advertising {key} ({_num(need - have)} more)"
        lines.append(f"asks for {_unit(key, need)}: {terms}; the cluster has {_unit(key, have)}; "
                     f"lower {_settings(parts, key)}, or {more}")
    return "; and ".join(lines) or None


def check(cfg, nodes: list[dict[str, float]], *, node_names: list[str] | None = None,
          local: bool = False) -> None:
    """Raise FitError if the run `cfg` can never be placed on `nodes` (their total resources);
    local: they are the run's own local Ray."""
    parts, groups = demand(cfg)
    capacity: dict[str, float] = {}
    for node in nodes:
        for k, v in visible(node).items():
            capacity[k] = capacity.get(k, 0.0) + v
    msg = short_message(parts, capacity, n_nodes=len(nodes), local=local)
    if msg:
        raise FitError(msg)
    for g in groups:  # each placement group on its own: enough in total, but no node holds a bundle
        if not fits(g.bundles, g.strategy, nodes)[0]:
            raise FitError(misfit_message(g.name, g.bundles, g.strategy, nodes, node_names=node_names))


def describe(cfg) -> str:
    """What the run reserves, for the job log: `CPU 2 (trainer 1 + scorers 2 x 0.375 + teacher
    0.25)`."""
    parts, _ = demand(cfg)
    asked = totals(parts)
    return "; ".join(f"{_unit(k, v)} ({' + '.join(_term(p, k) for p in parts if k in p.bundle)})"
                     for k, v in sorted(asked.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU"),
                                                                        kv[0]))) or "nothing"


def check_cluster(cfg) -> str:
    """check() against the alive nodes of the Ray this process is connected to; returns the
    one-line summary of what the run reserves and what the cluster has."""
    import ray

    from activesyn_ray.runtime import started_local_ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = [n["Resources"] for n in alive]
    names = [("head " if "node:__internal_head__" in n["Resources"] else "")
             + str(n.get("NodeManagerAddress", "?")) for n in alive]
    check(cfg, nodes, node_names=names, local=started_local_ray())
    capacity: dict[str, float] = {}
    for node in nodes:
        for k, v in visible(node).items():
            capacity[k] = capacity.get(k, 0.0) + v
    asked = totals(demand(cfg)[0])
    has = ", ".join(_unit(k, capacity.get(k, 0.0)) for k in asked) or "nothing asked"
    return f"the run reserves {describe(cfg)}; the cluster ({len(nodes)} node" \
           f"{'s' * (len(nodes) != 1)}) has {has}"
