"""The report's arithmetic on hand-made run directories (no Ray): efficiency, win rate, Spearman."""

import json

import pytest

from activesyn_ray import runstore
from activesyn_ray.config import dump_config, load_config
from activesyn_ray.report import write_report


def _run(tmp_path, strategy, seed, accs, k=10, synth=()):
    cfg = load_config(None, [f"selection.strategy={strategy}", f"seed={seed}", "name=t"])
    store = runstore.RunStore(tmp_path / f"{strategy}-{seed}").create(dump_config(cfg))
    store.save_state({"phase": "done"})
    store.append(runstore.METRICS, [{"iteration": i + 1, "samples": k * (i + 1),
                                     "teacher_tokens": 100 * k * (i + 1), "accuracy": a}
                                    for i, a in enumerate(accs)])
    store.append(runstore.SCORES, [{"kind": "synthetic", "seed_score": a, "sample_score": b}
                                   for a, b in synth])
    return store.root


def test_efficiency_win_rate_and_spearman(tmp_path):
    dirs = [_run(tmp_path, "random", s, [0.1, 0.2, 0.3, 0.4]) for s in (0, 1)]
    # loss reaches random's final 0.4 at 20 samples (seed 0) and 40 samples (seed 1): ratios 2 and 1
    dirs += [_run(tmp_path, "loss", 0, [0.2, 0.4, 0.5, 0.6], synth=[(1, 1), (2, 2), (3, 3), (4, 5)])]
    dirs += [_run(tmp_path, "loss", 1, [0.1, 0.2, 0.3, 0.4], synth=[(1, 2), (2, 1), (3, 4)])]
    out = tmp_path / "report"
    summary = write_report(dirs, out)
    row = next(r for r in summary["table"] if r["strategy"] == "loss")
    assert row["efficiency_vs_random"]["mean"] == pytest.approx(1.5)
    assert row["efficiency_vs_random"]["std"] == pytest.approx(0.5)
    assert row["final_accuracy_mean"] == pytest.approx(0.5)
    # mean curves: loss (.15 .3 .4 .5) beats random (.1 .2 .3 .4) at all 4 budget points
    i, j = summary["strategies"].index("loss"), summary["strategies"].index("random")
    assert summary["win_rate"][i][j] == 1.0 and summary["win_rate"][j][i] == 0.0
    assert row["seed_vs_synthetic_spearman"]["n"] == 7 and row["seed_vs_synthetic_spearman"]["rho"] > 0.5
    assert (out / "win_rate.png").stat().st_size > 1000
    assert (out / "accuracy_vs_budget_basic_arithmetic.png").exists()
    assert "| basic_arithmetic | loss | 2 |" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["strategies"] == ["loss", "random"]


def test_not_reached_is_reported(tmp_path):
    dirs = [_run(tmp_path, "random", 0, [0.3, 0.5]), _run(tmp_path, "entropy", 0, [0.1, 0.2])]
    row = next(r for r in write_report(dirs, tmp_path / "r")["table"] if r["strategy"] == "entropy")
    assert row["efficiency_vs_random"]["mean"] is None and row["efficiency_vs_random"]["not_reached"] == 1
