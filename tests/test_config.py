import pytest

from activesyn_ray.config import ConfigError, load_config, reference_markdown
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_config_is_valid():
    cfg = load_config(ROOT / "jobs" / "quickstart.yaml")
    assert cfg.task.kind == "gym" and cfg.budget.samples > 0


@pytest.mark.parametrize("override, expected", [
    ("budget.samples=-5", "budget.samples: must be > 0 (got -5)"),
    ("budget.sampels=5", "budget.sampels: unknown key"),
    ("student.lr=fast", "student.lr: Input should be a valid number"),
    ("selection.strategy=best", "selection.strategy: unknown 'best'"),
    ("selection.mode=greedy", "selection.mode: Input should be 'topk' or 'sample'"),
    ("resources.trainer.num_gpus=-1", "resources.trainer.num_gpus: must be >= 0"),
])
def test_bad_value_names_its_path(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "jobs" / "quickstart.yaml", [override])
    assert expected in str(err.value)
    assert "quickstart.yaml" in str(err.value)


def test_budget_needs_a_cap():
    with pytest.raises(ConfigError, match="budget: .*uncapped"):
        load_config(None, ["budget.samples=null"])


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbudget:\n  samples: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_override_types_and_nesting():
    cfg = load_config(None, ["selection.k=3", "student.lora=null", "teacher.vllm.tensor_parallel_size=2"])
    assert cfg.selection.k == 3 and cfg.student.lora is None
    assert cfg.teacher.vllm.tensor_parallel_size == 2


def test_procedural_teacher_needs_generator():
    with pytest.raises(ConfigError, match="teacher.engine"):
        load_config(None, ["task.kind=game24", "teacher.engine=procedural"])


def test_config_reference_is_current():
    # docs/config.md is generated from the schema; regenerate with `python -m activesyn_ray.config`.
    assert (ROOT / "docs" / "config.md").read_text().strip() == reference_markdown().strip()


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT / "jobs")))
def test_every_job_file_validates(path):
    import yaml

    from activesyn_ray.experiment import load_experiment

    data = yaml.safe_load(path.read_text())
    if data.get("kind") == "RayJob":
        return  # a Kubernetes manifest (checked in test_cluster.py)
    if "grid" in data:
        _, runs = load_experiment(path)  # validates every run config of the grid
        assert runs
    else:
        load_config(path)


def test_grid_errors_name_the_run_field(tmp_path):
    from activesyn_ray.experiment import load_experiment

    (tmp_path / "base.yaml").write_text("name: b\n")
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nbase: base.yaml\noverrides: {budget.samples: 0}\n")
    with pytest.raises(ConfigError, match="budget.samples: must be > 0"):
        load_experiment(grid)


def test_a_run_snapshot_with_several_teacher_replicas_loads_again(tmp_path):
    """The run directory's config.yaml holds every field, resources.teacher.num_workers too: with
    teacher.replicas 2 it used to say 1, and the coordinator refused its own snapshot."""
    from activesyn_ray.config import dump_config

    cfg = load_config(ROOT / "jobs" / "quickstart.yaml", ["teacher.replicas=2"])
    snap = tmp_path / "config.yaml"
    snap.write_text(dump_config(cfg))
    again = load_config(snap)
    assert again.resources.teacher.num_workers == again.teacher.replicas == 2
    assert again.fingerprint() == cfg.fingerprint()
    with pytest.raises(ConfigError, match="drop resources.teacher.num_workers"):
        load_config(snap, ["teacher.replicas=3"])
