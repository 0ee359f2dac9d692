"""What state.json says about a run, and how a resumed run makes its files agree with it.

The Coordinator saves the last completed step (a `Phase`) after each step; a killed run resumes
after it. Logs (metrics.jsonl, scores.jsonl) written after the last save belong to a step that did
not finish and are cut; teacher samples that completed after the last save were paid for, so
they are kept and charged again to the rebuilt ledger (once: the ledger journal has their ids).
"""

from __future__ import annotations

from enum import Enum

from activesyn_ray import runstore
from activesyn_ray.budget import Ledger
from activesyn_ray.runstore import RunStore


class Phase(str, Enum):
    """The last completed step, saved in state.json; resume continues after it."""
    PREPARED = "prepared"    # run directory written, nothing run yet
    SELECTING = "selecting"  # iteration started: score + select in progress
    SELECTED = "selected"    # seeds chosen (state.selected)
    GENERATED = "generated"  # this iteration's samples on disk, each decontaminated
    SCORED = "scored"        # the new samples scored (seed-vs-sample rank correlation)
    EVALUATED = "evaluated"  # trained and evaluated: one metrics row, one curve point
    DONE = "done"


_OLD_PHASES = {"scored-synthetic": Phase.SCORED}  # run directories written by earlier versions

# What the loop does after saving each phase (the console's bar shows it).
NEXT_STEP = {Phase.SELECTING.value: "scoring the seed pool", Phase.SELECTED.value: "generating",
             Phase.GENERATED.value: "training", Phase.SCORED.value: "training"}


def recover(store: RunStore, ledger: Ledger) -> dict:
    """Make the files agree with state.json: drop torn tails and the logs of unfinished steps,
    keep (and re-charge to `ledger`) teacher samples that completed after the last state save.
    Returns the state to continue from."""
    store.repair()
    state = store.load_state()
    state["phase"] = _OLD_PHASES.get(state["phase"], state["phase"])
    store.truncate_after(runstore.METRICS, state["n_metrics"])
    store.truncate_after(runstore.SCORES, state["n_scores"])
    synthetic = store.read(runstore.SYNTHETIC)
    for rec in synthetic[state["n_synthetic"]:]:
        ledger.charge(rec["request_id"], prompt_tokens=rec["prompt_tokens"],
                      completion_tokens=rec["completion_tokens"], samples=1,
                      parsed=rec["parsed"], rejected=bool(rec.get("rejected")),
                      cached=bool(rec.get("cached")))
    state["n_synthetic"] = len(synthetic)
    state["ledger"] = ledger.to_dict()
    return state
