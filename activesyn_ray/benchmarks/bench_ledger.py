"""Ledger persistence cost per step: state.json write time at 100 vs 100,000 charged samples.

    python -m activesyn_ray.benchmarks.bench_ledger          # ~10 s, no Ray; prints one table

Each "step" charges 16 new requests (one loop iteration's generate chunk) and saves state.json the
way the coordinator does (`ledger.to_dict()` + an atomic, fsynced state write). `journal`: the
charged ids go to the append-only charged.jsonl (what runs use); `ids in state`: the old layout,
every charged id rewritten into state.json at every save.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activesyn_ray.budget import LEDGER_JOURNAL, Ledger  # noqa: E402
from activesyn_ray.runstore import RunStore  # noqa: E402

STEP = 16
REPEATS = 15


def ledger_with(n: int, root: Path, journal: bool) -> Ledger:
    led = Ledger(max_samples=None, max_tokens=10**12)
    if journal:
        led = Ledger.from_dict(led.to_dict(), journal=root / LEDGER_JOURNAL)
    for i in range(n):
        led.charge(f"gen-{i // 96}-{i}", prompt_tokens=470, completion_tokens=42, samples=1)
    led.to_dict()  # the ids charged so far are saved: what follows is one ordinary step
    return led


def step_ms(n: int, journal: bool) -> tuple[float, int]:
    """Median ms of charge-16-then-save at n charged samples; and the state.json size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        led = ledger_with(n, Path(tmp), journal)
        state = {"phase": "generated", "iteration": 1, "n_synthetic": n}
        times = []
        for r in range(REPEATS):
            for j in range(STEP):
                led.charge(f"step-{r}-{j}", prompt_tokens=470, completion_tokens=42, samples=1)
            t0 = time.perf_counter()
            state["ledger"] = led.to_dict()
            store.save_state(state)
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times), store.path("state.json").stat().st_size


def main() -> None:
    print(f"state write per step (charge {STEP}, then to_dict + atomic fsynced state.json), "
          f"median of {REPEATS}")
    print(f"{'charged':>9} | {'journal: ms':>11} | {'state bytes':>11} | {'ids in state: ms':>16} | "
          f"{'state bytes':>11}")
    for n in (100, 100_000):
        j_ms, j_size = step_ms(n, journal=True)
        o_ms, o_size = step_ms(n, journal=False)
        print(f"{n:>9,} | {j_ms:>11.2f} | {j_size:>11,} | {o_ms:>16.2f} | {o_size:>11,}")


if __name__ == "__main__":
    main()
