"""Peak resident memory per actor kind over a run (memory.json), for sizing num_cpus / memory
per node: each process's own high-water mark, the largest actor of each kind."""

from __future__ import annotations

import ray

from activesyn_ray.devices import peak_rss_bytes

MEMORY = "memory.json"  # written when the run ends; the driver adds its own peak


def memory_report(student, teacher) -> dict[str, int]:
    out = {"coordinator": peak_rss_bytes()}
    peaks = student.peak_rss()
    out["trainer rank"] = max(r["peak_rss_bytes"] for r in peaks["trainer"])
    for r in peaks["scorer"]:  # the scorer's size depends on the paths it built
        key = f"scorer shard ({'+'.join(r['paths'])})"
        out[key] = max(out.get(key, 0), r["peak_rss_bytes"])
    replicas = getattr(teacher.backend, "actors", None)  # none under Ray Serve
    if replicas:
        for r in ray.get([a.peak_rss.remote() for a in replicas]):
            key = f"teacher replica ({r['engine']})"
            out[key] = max(out.get(key, 0), r["peak_rss_bytes"])
    return out
