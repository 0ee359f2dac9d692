"""RUN/timeline.json: where a run's time went, in Chrome's trace format (open it in
https://ui.perfetto.dev or chrome://tracing).

Two kinds of spans: the loop's phases (`PhaseClock.spans`), one track per actor group that does
the phase's work (trainer ranks, scorer shards, teacher replicas) and one for the coordinator's
own steps, each span tagged with its round and lane (a pipelined run shows the teacher's round
t+1 under the trainer's round t); and, when the run ends, Ray's own task events (`ray.timeline`):
every method call of every actor since the run (re)started, one track per worker process.
A resumed run appends to the spans already in the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from activesyn_ray.atomic_files import atomic_write_json

log = logging.getLogger(__name__)

TIMELINE = "timeline.json"
LOOP_PID = "activesyn loop"
# which actor group does a phase's work
TRACK = {"train": "trainer ranks", "eval": "scorer shards", "eval+score": "scorer shards",
         "score": "scorer shards", "score_synthetic": "scorer shards",
         "generate": "teacher replicas", "select": "coordinator", "wait_teacher": "coordinator"}


def phase_events(spans: list[dict]) -> list[dict]:
    return [{"name": s["name"], "cat": s["lane"], "ph": "X", "pid": LOOP_PID,
             "tid": TRACK.get(s["name"], "coordinator"), "ts": s["start"] * 1e6,
             "dur": (s["end"] - s["start"]) * 1e6,
             "args": {"round": s["round"], "lane": s["lane"]}} for s in spans]


def ray_task_events(since_s: float) -> list[dict]:
    """Ray's per-actor method spans since `since_s` (unix seconds); [] where Ray has none."""
    import ray

    try:
        events = ray.timeline()
    except Exception as err:  # task events off, or a Ray without them: the loop's spans remain
        log.warning("ray.timeline() unavailable (%s); timeline.json holds the loop's phases only",
                    err)
        return []
    # one span per method call; Ray's sub-spans of each call (task:deserialize_arguments,
    # task:execute, task:store_outputs) would triple the file and say little more
    return [e for e in events if e.get("ph") == "X" and e.get("ts", 0) >= since_s * 1e6
            and not str(e.get("name", "")).startswith("task:")]


def write_timeline(run_dir: Path, spans: list[dict], *, since_s: float,
                   ray_events: list[dict] = ()) -> Path:
    """This process's spans (and Ray's events) after those an earlier process of the run wrote
    before `since_s`."""
    path = Path(run_dir) / TIMELINE
    kept = []
    if path.exists():
        try:
            kept = [e for e in json.loads(path.read_text()).get("traceEvents", [])
                    if e.get("ts", 0) < since_s * 1e6]
        except (OSError, ValueError):
            kept = []  # a torn file from a killed process: start it again
    atomic_write_json(path, {"traceEvents": kept + phase_events(spans) + list(ray_events),
                             "displayTimeUnit": "ms"})
    return path
