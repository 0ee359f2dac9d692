"""The loop's live numbers as Ray metrics (`ray.util.metrics`): on the Ray dashboard's metrics
view and every node's Prometheus endpoint (`http://NODE:METRICS_EXPORT_PORT/metrics`, names
prefixed `ray_`), tagged with the run's name so runs sharing a cluster stay apart:

  activesyn_teacher_tokens             counter    teacher tokens charged (prompt + completion)
  activesyn_teacher_requests_in_flight gauge      requests sent to replicas, not answered yet
  activesyn_teacher_queue_depth        gauge      requests waiting for a free replica
  activesyn_phase_seconds              histogram  seconds per loop phase (tags phase, lane)
"""

from __future__ import annotations

PHASE_BOUNDARIES = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800]


class LoopMetrics:
    def __init__(self, run: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"run": run}
        self.tokens = Counter("activesyn_teacher_tokens", "teacher tokens charged (prompt + "
                              "completion)", tag_keys=("run",))
        self.in_flight = Gauge("activesyn_teacher_requests_in_flight", "teacher requests sent "
                               "to replicas and not answered yet", tag_keys=("run",))
        self.queued = Gauge("activesyn_teacher_queue_depth", "teacher requests waiting for a "
                            "free replica", tag_keys=("run",))
        self.phase = Histogram("activesyn_phase_seconds", "seconds per loop phase",
                               boundaries=PHASE_BOUNDARIES, tag_keys=("run", "phase", "lane"))
        for m in (self.tokens, self.in_flight, self.queued, self.phase):
            m.set_default_tags(tags)

    @classmethod
    def attach(cls, run: str, clock, teacher) -> "LoopMetrics":
        """Metrics for `run`, fed by the phase clock and the teacher's dispatcher."""
        metrics = cls(run)
        clock.on_phase = metrics.on_phase
        if hasattr(teacher.backend, "on_load"):  # Ray Serve routes on its own
            teacher.backend.on_load = metrics.on_load
        return metrics

    def on_phase(self, name: str, lane: str, seconds: float) -> None:
        self.phase.observe(seconds, tags={"phase": name, "lane": lane})

    def on_load(self, queued: int, in_flight: int) -> None:
        self.queued.set(queued)
        self.in_flight.set(in_flight)

    def on_tokens(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens.inc(tokens)
