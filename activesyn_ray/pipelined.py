"""The loop with the teacher one round ahead (loop.pipeline: true).

While round t trains and is evaluated (the main lane: this actor's run thread), the teacher lane
(one more thread of the same actor) selects round t+1's seeds and generates them:

    main lane     | wait t | train t, evaluate t           | wait t+1 | train t+1, evaluate t+1 |
    teacher lane  |        | select t+1, generate t+1 |    |          | select t+2, generate ...

Round r's selection reads the pool's scores under the adapter of round r-1-max_staleness, as that
round's (fused) evaluation stored them in scores.jsonl, and leaves out the seeds of the rounds that
adapter has not trained on (their samples are in flight or untrained: a stale loss would pick them
again). That rule fixes every choice whatever the lanes' timing, so a killed pipelined run resumes
to the samples and metrics of an uninterrupted one: state.json's `ahead` holds the lane's round
(its selection, then `generated`), saved before its first request; request ids are the sync
loop's (gen-<round>-<seed id>), so a resumed lane skips what is on disk and nothing is charged
twice. The teacher lane is the only one charging the ledger; only one round is ever in flight,
so a selection's budget check sees every sample charged before it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from activesyn_ray.coordinator import Coordinator
from activesyn_ray.run_state import Phase
from activesyn_ray.selection import SeedScores


class PipelinedCoordinator(Coordinator):
    def _run_iterative(self, state: dict, stop_after: int | None = None) -> dict | None:
        """The loop, pipelined (module docstring); returns as Coordinator._run_iterative does."""
        lane = ThreadPoolExecutor(1, thread_name_prefix="teacher-lane")
        ahead = None  # the lane's Future for round it + 1: True once its samples are on disk
        try:
            while True:
                it, phase = state["iteration"], state["phase"]
                if phase in (Phase.PREPARED, Phase.EVALUATED):
                    held = ahead is not None or self._saved_ahead(state) == it + 1
                    if stop_after is not None and it >= stop_after:
                        if ahead is not None:  # the folder as a kill after that round leaves it
                            ahead.result()
                        return None
                    if not held and not self._continues(it):
                        return state
                    ahead = ahead or lane.submit(self._select_and_generate, state, it + 1)
                    with self.clock.phase("wait_teacher"):
                        generated = ahead.result()
                    ahead = None
                    if not generated:  # the budget cannot pay for one more request
                        return state
                    it += 1
                    state = self._save(state, iteration=it, phase=Phase.GENERATED)
                # round it+1 starts now, unless it is already under way (or resumed: saved)
                if ahead is None and (self._saved_ahead(state) == it + 1 or self._continues(it)):
                    ahead = lane.submit(self._select_and_generate, state, it + 1)
                # the pool rows for round it+2 are written when round it+1 exists (decided
                # here, before the lane charges anything, so a resumed run decides the same)
                state = self._train_and_evaluate(state, it, more=ahead is not None)
        finally:
            lane.shutdown(wait=False, cancel_futures=True)

    def _select_and_generate(self, state: dict, r: int) -> bool:
        """The teacher lane's round r: its seeds (saved as state['ahead'] before any request),
        then its samples. False when the budget cannot pay for one more request."""
        ahead = state.get("ahead") or {}
        if ahead.get("iteration") != r:
            adapter = max(0, r - 1 - self.cfg.loop.max_staleness)
            with self.clock.phase("select", round=r, lane="teacher"):
                scores = self._stored_pool_scores(adapter)
                in_flight = frozenset(rec["seed_index"] for rec in self._synthetic()
                                      if adapter < rec["iteration"] < r)
                picked, seed_scores = self._choose(r, scores, exclude=in_flight)
            ahead = {"iteration": r, "phase": Phase.SELECTED.value, "selected": picked,
                     "seed_scores": seed_scores, "adapter": adapter}
            state = self._save(state, ahead=ahead)
        if not ahead["selected"]:
            return False
        if ahead["phase"] == Phase.SELECTED.value:
            state = self._generate_round(state, r, ahead["selected"], ahead["seed_scores"],
                                         adapter=ahead["adapter"])
            self._save(state, ahead=dict(ahead, phase=Phase.GENERATED.value))
        return True

    def _stored_pool_scores(self, adapter: int) -> SeedScores:
        """The pool's scores under `adapter`, as its evaluation stored them (pipelined select)."""
        if not self.strategy.needs:
            return SeedScores()
        stored = self.pool_scores.stored(adapter + 1, set(self.strategy.needs))
        if stored is None:
            raise RuntimeError(f"{self.store.root}: scores.jsonl lacks the pool's scores under "
                               f"the adapter of round {adapter} (iteration {adapter + 1} rows), "
                               f"which a pipelined selection reads")
        return self.pool_scores.with_history(stored, adapter + 1, self.strategy.history)

    @staticmethod
    def _saved_ahead(state: dict) -> int | None:
        """The round the teacher lane had selected when state.json was saved."""
        return (state.get("ahead") or {}).get("iteration")

