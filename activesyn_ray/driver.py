"""The driver side of one run: Ray started or joined, the run's Coordinator actor started on this
node, its console followed to the end, the summary printed. `activesyn run` / `resume`, `activesyn
experiment` and the in-process tests call `run_loop`; the loop itself is coordinator.py's
(pipelined.py's with `loop.pipeline: true`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from activesyn_ray import runstore
from activesyn_ray.config import load_config
from activesyn_ray.coordinator import Coordinator
from activesyn_ray.memory_report import MEMORY
from activesyn_ray.pipelined import PipelinedCoordinator
from activesyn_ray.runstore import RunStore


def run_loop(run_dir: str | Path | RunStore) -> dict:
    """Drive one run to the end (or resume it): starts/joins Ray, runs the Coordinator actor while
    the console follows it, prints the summary (run directory, final metrics, what next)."""
    from activesyn_ray.console import RunConsole, say, seconds, summary_lines
    from activesyn_ray.fit import check_cluster
    from activesyn_ray.runtime import init_ray, library_output

    t_start = time.perf_counter()
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    cfg = load_config(store.path(runstore.CONFIG))
    with library_output():
        if not ray.is_initialized():
            address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
            say(f"joining the Ray cluster at {address}" if address else
                f"starting Ray (local, {cfg.resources.local_num_cpus or os.cpu_count()} CPUs)")
            init_ray(cfg.resources)
            say(f"Ray ready ({seconds(time.perf_counter() - t_start)})")
        # all pools against the cluster's totals at once: FitError in one line, before any actor
        say(check_cluster(cfg))
        # Pinned to the driver's node: the run directory is a local path there (no shared storage
        # needed; adapters come back from the trainer as bytes).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # threads: run, the console's progress polls, shutdown
        cls = PipelinedCoordinator if cfg.loop.pipeline else Coordinator
        actor = ray.remote(cls).options(num_cpus=cfg.resources.coordinator_num_cpus,
                                        scheduling_strategy=here, max_concurrency=3
                                        ).remote(run_dir=str(store.root.resolve()))
        try:
            summary = RunConsole(total=cfg.budget.samples).follow(actor, actor.run.remote())
        finally:
            try:
                ray.get(actor.shutdown.remote(), timeout=60)
            except Exception:
                pass
            ray.kill(actor, no_restart=True)
        memory = store.path(MEMORY)
        if memory.exists():  # this process (the driver) joins the actors' peak RSS
            from activesyn_ray.devices import peak_rss_bytes

            report = json.loads(memory.read_text())
            runstore.atomic_write_json(memory, {**report, "driver": peak_rss_bytes()})
            store.sync()
    for line in summary_lines(store.root, wall_s=time.perf_counter() - t_start,
                              next_step=cfg.output.next_step):
        say(line)
    return summary
