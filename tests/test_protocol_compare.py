"""The protocol comparison (activesyn_ray/studies/protocol_compare.py): paired arm statistics on
committed runs, and docs/results.md's table reproduced from the committed snapshots. Fast: no
model, no Ray."""

import json
import shutil
from pathlib import Path

import pytest

from activesyn_ray.studies.protocol_compare import compare, load_arm, markdown

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "docs" / "results" / "pretrained-cpu" / "grid"
PROTOCOL = ROOT / "docs" / "results" / "protocol"


def test_protocol_comparison_of_an_arm_with_itself(tmp_path):
    """Two copies of the committed pretrained grid as two arms: zero paired differences, a time
    ratio of 1, 'holds' but does not 'pay'; a different arm moves the numbers."""
    for arm in ("ref", "same"):
        shutil.copytree(GRID, tmp_path / arm)
    arms = {a: load_arm(tmp_path / a) for a in ("ref", "same")}
    assert len(arms["ref"]) == 15  # 5 strategies x 3 seeds, all finished
    out = compare(arms)
    row = out["strategies"]["loss"]["same"]
    assert row["accuracy_diff"]["mean"] == 0 and row["auc_diff"]["mean"] == 0
    assert row["train_time_ratio"]["mean"] == pytest.approx(1.0)
    assert row["holds"] is True and row["pays"] is False
    assert out["strategies"]["loss"]["ref"]["train_s"]["mean"] > 100
    assert "| loss | same | 3 |" in markdown(out)
    for r in arms["same"]:  # an arm that trains 4x faster and ends 0.5 lower
        r["train_s"] /= 4
        r["metrics"][-1] = dict(r["metrics"][-1], accuracy=r["metrics"][-1]["accuracy"] - 0.5)
    row = compare(arms)["strategies"]["loss"]["same"]
    assert row["train_time_ratio"]["mean"] == pytest.approx(4.0) and row["pays"] is True
    assert row["accuracy_diff"]["mean"] == pytest.approx(-0.5) and row["holds"] is False


def test_protocol_comparison_reproduces_the_committed_table_from_the_snapshots():
    """docs/results.md's protocol table is this tool's output over docs/results/protocol/."""
    arms = {a: load_arm(PROTOCOL / a) for a in
            ("protocol-restart-cpu", "protocol-continue25-cpu", "protocol-continue50-cpu")}
    assert json.loads(json.dumps(compare(arms))) == \
        json.loads((PROTOCOL / "protocol-compare.json").read_text())
