"""Cluster configs and placement: cluster.yaml through Ray's own validator, the KubeRay RayJob's
structure, the worked 2 x 8-GPU run config, and placement on a simulated multi-node Ray cluster
(ray.cluster_utils.Cluster: one head + two teacher nodes + one trainer node as separate raylets on
this machine, with logical GPUs) using the real ActorGroup.

    pytest tests/test_cluster.py -m "not slow"   # config checks only, ~2 s
    pytest tests/test_cluster.py                 # + the simulated cluster, ~1 min
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from activesyn_ray import placement
from activesyn_ray.config import ActorResources, ConfigError, load_config
from activesyn_ray.placement import PlacementError, bundle_for, fits, misfit_message, shared_bundle

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "jobs" / "kuberay-rayjob.yaml"
RUN_2X8 = ROOT / "jobs" / "cluster-2x8.yaml"


# ------------------------------------------------------------------------------ cluster.yaml
def ray_validate(cfg: dict) -> dict:
    """What `ray up` does before touching a cloud: fill in the provider's defaults, then validate
    against Ray's schema and its cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_validator():
    full = ray_validate(load_cluster_yaml())
    types = full["available_node_types"]
    assert set(types) == {"head", "teacher_gpu", "trainer_gpu"}
    assert full["head_node_type"] == "head" and types["head"]["resources"].get("GPU", 0) == 0
    assert types["teacher_gpu"]["resources"]["teacher_node"] == types["teacher_gpu"]["resources"]["GPU"]
    assert types["trainer_gpu"]["resources"]["trainer_node"] == types["trainer_gpu"]["resources"]["GPU"]
    assert any('pip install -q -e ".[gpu]"' in c for c in full["setup_commands"])
    assert "/home/ray/activesyn_ray" in full["file_mounts"]


def _misspelt_top(cfg):
    cfg["worker_start_ray_comands"] = cfg.pop("worker_start_ray_commands")


def _misspelt_node_key(cfg):
    cfg["available_node_types"]["teacher_gpu"]["min_worker"] = 1


def _fractional_custom_resource(cfg):
    cfg["available_node_types"]["teacher_gpu"]["resources"]["teacher_node"] = 0.5


def _unknown_head_type(cfg):
    cfg["head_node_type"] = "ray.head.default"


def _too_few_max_workers(cfg):
    cfg["max_workers"] = 1  # below the sum of min_workers (2)


@pytest.mark.parametrize("breaks", [_misspelt_top, _misspelt_node_key, _fractional_custom_resource,
                                    _unknown_head_type, _too_few_max_workers])
def test_broken_cluster_yaml_fails_ray_validator(breaks):
    import jsonschema

    cfg = load_cluster_yaml()
    breaks(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(cfg)


def test_cluster_yaml_ray_version_matches_project():
    import ray

    image = load_cluster_yaml()["docker"]["image"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f":{ray.__version__}-" in image
    assert f'"ray[default,serve]=={ray.__version__}"' in pyproject


def _node_types_as_nodes(cfg: dict) -> list[dict[str, float]]:
    """The worker nodes cluster.yaml starts (min_workers of each type) plus the head, as Ray
    resource dicts."""
    nodes = []
    for name, t in cfg["available_node_types"].items():
        count = 1 if name == cfg["head_node_type"] else t.get("min_workers", 0)
        nodes += [{k: float(v) for k, v in t["resources"].items()}] * count
    return nodes


def _groups_fit(cfg_run, nodes: list[dict[str, float]]) -> None:
    res = cfg_run.resources
    student = [shared_bundle(res.trainer, res.scorers)] * res.trainer.num_workers
    teacher = [bundle_for(res.teacher)] * cfg_run.teacher.replicas
    assert fits(student, res.trainer.placement_strategy, nodes)[0], \
        misfit_message("student", student, res.trainer.placement_strategy, nodes)
    assert fits(teacher, res.teacher.placement_strategy, nodes)[0], \
        misfit_message("teacher", teacher, res.teacher.placement_strategy, nodes)
    # The teacher and the student are up at the same time: their pinning resources keep them on
    # disjoint node types, so each node type must hold its own group.
    for pin, group in (("teacher_node", teacher), ("trainer_node", student)):
        own = [n for n in nodes if n.get(pin)]
        assert fits(group, "PACK", own)[0], f"{pin} nodes cannot hold their group"


def test_cluster_yaml_holds_the_2x8_run():
    _groups_fit(load_config(RUN_2X8), _node_types_as_nodes(load_cluster_yaml()))


# ------------------------------------------------------------------------------ KubeRay RayJob
def load_rayjob() -> dict:
    return yaml.safe_load(RAYJOB_YAML.read_text())


def _ray_resources_of(group: dict) -> dict[str, float]:
    """What `ray start` in this group's pods advertises: CPU/GPU from the container limits (as
    KubeRay derives them), custom resources from rayStartParams.resources."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    out = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
    params = group.get("rayStartParams", {})
    if "num-gpus" in params:
        out["GPU"] = float(params["num-gpus"])
    if "resources" in params:
        # KubeRay pastes the value into a shell command; it trims the quotes the same way.
        out.update(json.loads(params["resources"].strip("'\"` ")))
    return out


def test_rayjob_manifest_has_what_kuberay_requires():
    job = load_rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m activesyn_ray.jobs.run jobs/cluster-2x8.yaml"
    assert (ROOT / spec["entrypoint"].split()[-1]).exists()
    import ray

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"teacher-gpu", "trainer-gpu"}
    for g in [head, *groups.values()]:
        # rayStartParams is map[string]string in the CRD: a bare YAML number is rejected.
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values())
        assert g["template"]["spec"]["containers"], "every group needs a pod template container"
    for g in groups.values():
        assert isinstance(g["replicas"], int) and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert _ray_resources_of(groups["teacher-gpu"])["teacher_node"] == 8
    assert _ray_resources_of(groups["trainer-gpu"])["trainer_node"] == 8
    assert _ray_resources_of(head)["GPU"] == 0
    yaml.safe_load(spec["runtimeEnvYAML"])  # a YAML string inside the manifest: must parse too


def test_rayjob_holds_the_2x8_run():
    cluster = load_rayjob()["spec"]["rayClusterSpec"]
    nodes = [_ray_resources_of(cluster["headGroupSpec"])]
    for g in cluster["workerGroupSpecs"]:
        nodes += [_ray_resources_of(g)] * g["replicas"]
    _groups_fit(load_config(RUN_2X8), nodes)


# ------------------------------------------------------------------------------ the 2x8 run config
def test_cluster_2x8_config_validates():
    cfg = load_config(RUN_2X8)
    r = cfg.resources
    assert cfg.teacher.engine == "vllm" and cfg.teacher.replicas == 8
    assert r.teacher.num_gpus == cfg.teacher.vllm.tensor_parallel_size == 1
    assert r.teacher.resources == {"teacher_node": 1} and r.teacher.placement_strategy == "SPREAD"
    assert r.trainer.num_workers == 8 and r.trainer.resources == {"trainer_node": 1}
    assert r.trainer.placement_strategy == "PACK"
    assert r.colocate_scorers and r.trainer.num_gpus + r.scorers.num_gpus == 1
    assert shared_bundle(r.trainer, r.scorers)["GPU"] == 1


@pytest.mark.parametrize("override, expected", [
    ("resources.teacher.num_gpus=1.5", "must be a whole number"),
    ("teacher.vllm.tensor_parallel_size=2", "tensor_parallel_size (2)"),
    ("resources.colocate_scorers=false", "several trainer ranks on one GPU"),
    ("resources.scorers.num_gpus=0.75", "must be <= 1"),
])
def test_cluster_2x8_bad_resource_edits_are_config_errors(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(RUN_2X8, [override])
    assert expected in str(err.value)


def test_tp2_variant_validates():
    cfg = load_config(RUN_2X8, ["teacher.replicas=4", "teacher.vllm.tensor_parallel_size=2",
                                "resources.teacher.num_gpus=2",
                                "resources.teacher.resources={teacher_node: 2}"])
    _groups_fit(cfg, _node_types_as_nodes(load_cluster_yaml()))


# ------------------------------------------------------------------------------ fit arithmetic
GPU_LESS = [{"CPU": 2.0, "memory": 2e10, "object_store_memory": 1e9, "node:10.0.0.1": 1.0}]


def test_gpu_on_a_gpu_less_cluster_names_both_numbers():
    msg = misfit_message("trainer", [{"CPU": 1.0, "GPU": 1.0}], "PACK", GPU_LESS)
    assert "asked in all CPU=1, GPU=1" in msg and "the cluster has CPU=2, GPU=0" in msg
    assert "short of GPU" in msg and "memory" not in msg


def test_fractional_gpus_never_span_two_gpus():
    node = {"CPU": 96.0, "GPU": 8.0}
    assert placement.node_capacity(node, {"GPU": 0.75}) == 8  # not 10
    assert placement.node_capacity(node, {"GPU": 0.5}) == 16
    assert placement.node_capacity(node, {"GPU": 2.0, "CPU": 40.0}) == 2  # CPU-bound


@pytest.mark.parametrize("strategy, ok", [("PACK", True), ("SPREAD", True),
                                          ("STRICT_PACK", False), ("STRICT_SPREAD", False)])
def test_strategies_against_node_layout(strategy, ok):
    two_teacher_nodes = [{"GPU": 2.0, "teacher_node": 2.0}] * 2
    assert fits([{"teacher_node": 1.0}] * 2, strategy, two_teacher_nodes)[0]
    assert fits([{"GPU": 1.0, "teacher_node": 1.0}] * 3, strategy, two_teacher_nodes)[0] is ok


def test_layout_misfit_with_enough_in_total():
    # 2 x 3-GPU replicas = the cluster's 6 GPUs in total, but only the 4-GPU node can take one.
    nodes = [{"GPU": 4.0}, {"GPU": 2.0}]
    assert fits([{"GPU": 3.0}] * 2, "PACK", nodes) == (False, 1)
    msg = misfit_message("teacher", [{"GPU": 3.0}] * 2, "PACK", nodes)
    assert "no node layout holds them" in msg and "hold 1 of them" in msg
    assert "asked in all GPU=6" in msg and "the cluster has GPU=6" in msg


# ------------------------------------------------------------------------------ simulated cluster
class Probe:
    """A light actor (no torch) that reports where it runs."""

    def __init__(self, *, rank: int, world_size: int, num_cpus: float, **_):
        self.rank = rank

    def where(self) -> dict:
        import ray

        return {"rank": self.rank, "node": ray.get_runtime_context().get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}


@pytest.fixture(scope="module")
def sim_cluster(no_shared_ray):
    """head (1 CPU, no GPU) + 2 teacher nodes (2 logical GPUs, teacher_node=2 each) + 1 trainer
    node (4 logical GPUs, trainer_node=4): four raylets on this machine, all logical."""
    import ray
    from ray.cluster_utils import Cluster

    import sys

    # Workers cannot import this test file: ship Probe (and this module's helpers) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # never depend on a ~/.ray/auth_token left around
    cluster = Cluster(initialize_head=True,
                      head_node_args=dict(num_cpus=1, include_dashboard=False))
    try:
        roles = {}
        for role, gpus, res in (("teacher-a", 2, {"teacher_node": 2}),
                                ("teacher-b", 2, {"teacher_node": 2}),
                                ("trainer", 4, {"trainer_node": 4})):
            node = cluster.add_node(num_cpus=1, num_gpus=gpus, resources=res)
            roles[node.node_id] = role
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        cluster.wait_for_nodes()
        roles[cluster.head_node.node_id] = "head"
        yield cluster, roles
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def _settle(timeout_s: float = 30) -> None:
    """Wait until the previous test's actors and placement groups gave their resources back
    (kills and removals are asynchronous; PACK/SPREAD preferences only show on an idle cluster)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free, total = ray.available_resources(), ray.cluster_resources()
        if all(free.get(k, 0) >= total[k] - 1e-6 for k in ("GPU", "teacher_node", "trainer_node")):
            return
        time.sleep(0.2)
    raise AssertionError(f"cluster not idle after {timeout_s}s: {ray.available_resources()}")


def _where(group) -> list[dict]:
    import ray

    return ray.get(group.call("where"), timeout=120)


def _teacher_resources(strategy: str, replicas: int = 2) -> ActorResources:
    # Built the way the teacher pool does it: cfg.resources.teacher with teacher.replicas bundles.
    cfg = load_config(None, [f"teacher.replicas={replicas}", "resources.teacher.num_cpus=0.1",
                             "resources.teacher.num_gpus=1",
                             "resources.teacher.resources={teacher_node: 1}",
                             f"resources.teacher.placement_strategy={strategy}"])
    return cfg.resources.teacher.model_copy(update={"num_workers": cfg.teacher.replicas})


@pytest.mark.slow
def test_teacher_replicas_spread_over_teacher_nodes(sim_cluster):
    _settle()
    from activesyn_ray.actors import ActorGroup

    _, roles = sim_cluster
    group = ActorGroup(Probe, name="teacher", resources=_teacher_resources("SPREAD"),
                       placement_timeout_s=60)
    try:
        where = _where(group)
        assert sorted(roles[w["node"]] for w in where) == ["teacher-a", "teacher-b"]
        assert all(len(w["gpus"]) == 1 for w in where)
    finally:
        group.shutdown()


@pytest.mark.slow
def test_teacher_replicas_pack_onto_one_teacher_node(sim_cluster):
    _settle()
    from activesyn_ray.actors import ActorGroup

    _, roles = sim_cluster
    group = ActorGroup(Probe, name="teacher", resources=_teacher_resources("PACK"),
                       placement_timeout_s=60)
    try:
        where = _where(group)
        assert len({w["node"] for w in where}) == 1
        assert roles[where[0]["node"]] in ("teacher-a", "teacher-b")
        assert len({w["gpus"][0] for w in where}) == 2  # two different GPUs of that node
    finally:
        group.shutdown()


@pytest.mark.slow
def test_trainer_ranks_pack_on_trainer_node_with_colocated_scorers(sim_cluster):
    _settle()
    from activesyn_ray.actors import ActorGroup

    _, roles = sim_cluster
    cfg = load_config(None, [
        "resources.colocate_scorers=true",
        "resources.trainer={num_workers: 4, num_cpus: 0.1, num_gpus: 0.5, "
        "resources: {trainer_node: 1}, placement_strategy: PACK}",
        "resources.scorers={num_workers: 4, num_cpus: 0.1, num_gpus: 0.5}"])
    res = cfg.resources
    pg = placement.reserve_shared("student", [res.trainer, res.scorers],
                                  strategy=res.trainer.placement_strategy, timeout_s=60)
    trainer = ActorGroup(Probe, name="trainer", resources=res.trainer, placement_group=pg)
    scorers = ActorGroup(Probe, name="scorers", resources=res.scorers, placement_group=pg)
    try:
        t, s = _where(trainer), _where(scorers)
        assert {roles[w["node"]] for w in t + s} == {"trainer"}
        assert len({w["gpus"][0] for w in t}) == 4, f"two trainer ranks share a GPU: {t}"
        assert [w["gpus"] for w in s] == [w["gpus"] for w in t]  # scorer i on rank i's GPU
        trainer.restart(2)  # a replaced rank goes back into its own bundle, same GPU
        assert _where(trainer)[2]["gpus"] == t[2]["gpus"]
    finally:
        trainer.shutdown()
        scorers.shutdown()
        placement.release(pg)


@pytest.mark.slow
def test_more_than_exists_fails_fast_with_both_numbers(sim_cluster):
    _settle()
    from ray.util import placement_group_table

    from activesyn_ray.actors import ActorGroup

    before = len(placement_group_table())
    for resources, asked, have in (
            (_teacher_resources("SPREAD", replicas=5), "teacher_node=5", "teacher_node=4"),
            (ActorResources(num_workers=9, num_cpus=0, num_gpus=1), "GPU=9", "GPU=8"),
            (ActorResources(num_workers=1, num_cpus=0, num_gpus=5), "GPU=5", "GPU=8")):
        t0 = time.monotonic()
        with pytest.raises(PlacementError) as err:
            ActorGroup(Probe, name="teacher", resources=resources, placement_timeout_s=600)
        assert time.monotonic() - t0 < 10, "must not wait for the placement timeout"
        assert asked in str(err.value) and have in str(err.value), str(err.value)
    # STRICT_PACK: 3 replicas fit the cluster's 4 teacher_node in total, but no node has 3.
    with pytest.raises(PlacementError, match="no node layout holds them"):
        ActorGroup(Probe, name="teacher", resources=_teacher_resources("STRICT_PACK", 3),
                   placement_timeout_s=600)
    assert len(placement_group_table()) == before  # refused before any placement group existed


@pytest.mark.slow
def test_fits_but_held_by_others_fails_after_the_timeout(sim_cluster):
    _settle()
    from activesyn_ray.actors import ActorGroup

    holder = ActorGroup(Probe, name="teacher", resources=_teacher_resources("SPREAD", 4),
                        placement_timeout_s=60)
    try:
        t0 = time.monotonic()
        with pytest.raises(PlacementError, match="not placed within 3s") as err:
            ActorGroup(Probe, name="teacher2", resources=_teacher_resources("SPREAD", 1),
                       placement_timeout_s=3)
        assert time.monotonic() - t0 < 30
        msg = str(err.value)
        # what is free of what it asks and who holds the rest; never Ray's per-group bookkeeping
        assert "teacher_node 0 of 4" in msg and "placement groups hold" in msg, msg
        assert "activesyn-teacher " in msg and "_group_" not in msg and "could hold" not in msg, msg
    finally:
        holder.shutdown()


@pytest.mark.slow
def test_waits_for_nodes_an_autoscaler_is_starting(sim_cluster, monkeypatch):
    """Just after `ray up` the GPU nodes are still booting: with nodes pending, the check waits for
    them instead of failing; here a third teacher node joins after a few seconds."""
    _settle()
    from concurrent.futures import ThreadPoolExecutor

    from activesyn_ray.actors import ActorGroup

    cluster, _ = sim_cluster
    monkeypatch.setattr(placement, "pending_nodes", lambda: 1)  # what the autoscaler would report
    t0 = time.monotonic()
    node = None
    with ThreadPoolExecutor(1) as pool:
        # 6 replicas; the 2 teacher nodes alive hold 4: the group must wait for the joining node.
        future = pool.submit(ActorGroup, Probe, name="teacher",
                             resources=_teacher_resources("SPREAD", 6), placement_timeout_s=120)
        time.sleep(3.0)
        assert not future.done(), "gave up (or placed) before the pending node joined"
        node = cluster.add_node(num_cpus=1, num_gpus=2, resources={"teacher_node": 2})  # main thread
        try:
            group = future.result(timeout=120)
            try:
                assert time.monotonic() - t0 >= 3.0
                assert len({w["node"] for w in _where(group)}) == 3
            finally:
                group.shutdown()
        finally:
            _settle()
            cluster.remove_node(node)
