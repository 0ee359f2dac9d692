"""Scorer shards: each computes ONLY the columns the strategy needs, on the path that can.

Columns (selection/base.py reads them) and the work each one implies:
  need         work                                                       path
  answer_text  greedy decode (at most student.max_new_tokens, stops at eos) inference path
  correct      greedy decode + the task's checker (StudentPool)          inference path
  loss         greedy decode + mean NLL of those tokens                   vllm: its logprobs;
                                                                          hf: one forced pass
  entropy      greedy decode + one teacher-forced pass over the answer:   HF (exact, full vocab)
               mean next-token entropy
  grad_embed   greedy decode + the same forced pass, BADGE embedding      HF (hidden states)
  loss_gt      ONE teacher-forced pass over prompt + reference, no decode HF, or vLLM
                                                                          prompt_logprobs with a
                                                                          merged adapter (see
                                                                          vllm_scorer.vllm_loss_gt)
  reward       greedy decode + reward model on prompt + answer            HF reward model
               (reward_model: verifier -> = correct, StudentPool)
  pass_rate    n SAMPLED answers at temperature T (selection.learnability) inference path
               -> `sampled_texts`; StudentPool checks each: share correct  (vllm: one request
                                                                          with n outputs)
               The prompt is `sample_prompt_ids`: the bare prompt, or with
               selection.learnability.shots the item's solved `shots` before it (both paths).
The inference path is student.inference (resolve_inference): vllm decodes with each round's LoRA
adapter in vLLM (student/vllm_scorer.py); hf does everything in transformers (student/hf_scorer.py).
One shard builds only the paths its needs use, lazily: a vLLM scorer asked only for `loss` never
loads the HF model; asked for entropy too, it loads it next to vLLM (twice the base weights).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from activesyn_ray.actors import set_threads
from activesyn_ray.devices import peak_rss_bytes
from activesyn_ray.models import resolve_model
from activesyn_ray.student import adapter_sync
from activesyn_ray.student.data import answer_ids, prompt_ids
from activesyn_ray.tasks.base import Task

if TYPE_CHECKING:  # the coordinator imports this module (for the class): it starts without torch
    import torch

NEEDS = frozenset({"answer_text", "correct", "loss", "loss_gt", "entropy", "grad_embed", "reward",
                   "pass_rate"})
DECODED = frozenset({"answer_text", "correct", "loss", "entropy", "grad_embed", "reward"})
"""Needs that start from the student's greedy answer."""
BADGE_DIMS = 16
"""Projected vocabulary dims of the BADGE embedding (grad_embed: BADGE_DIMS x hidden values)."""


SHOT_SEPARATOR = "\n\n"
"""Between a solved shot and the next `Question:` (the lm-eval-harness GSM8K few-shot layout, which
Task.prompt / Task.target already follow)."""
NEXT_QUESTION = "Question:"
"""Where a sampled answer after shots is cut: a base model that has seen k solved blocks goes on
writing block k+2, and the checker reads the LAST `####` of a text."""


def sample_prompt_ids(tokenizer, question: str, shots: list[dict] | tuple = (),
                      max_len: int | None = None) -> list[int]:
    """The prompt of the n sampled answers (pass_rate). No shots: prompt_ids, the prompt of every
    other path. Shots ({"question", "target"} dicts, targets as Task.target writes them): each one
    tokenized as a training example's prompt and answer are (data.encode: prompt and target apart,
    no eos here), followed by SHOT_SEPARATOR, then the question's prompt; a BOS (where the
    tokenizer adds one) only at the very start, so the question's tokens are prompt_ids' without it.
    max_len: the first shots are left out, whole, until the prompt fits (never the question)."""
    if not shots:
        return prompt_ids(tokenizer, question)
    bos = tokenizer("", add_special_tokens=True)["input_ids"]  # what prompt_ids puts first
    blocks = [tokenizer(Task.prompt(shot["question"]), add_special_tokens=False)["input_ids"]
              + answer_ids(tokenizer, shot["target"], eos=False)
              + tokenizer(SHOT_SEPARATOR, add_special_tokens=False)["input_ids"] for shot in shots]
    tail = tokenizer(Task.prompt(question), add_special_tokens=False)["input_ids"]
    while blocks and max_len is not None and \
            len(bos) + sum(map(len, blocks)) + len(tail) > max_len:
        blocks.pop(0)
    return bos + [t for b in blocks for t in b] + tail


def cut_at_next_question(text: str) -> str:
    """A sampled answer after shots, up to where it starts another `Question:` block."""
    at = text.find(NEXT_QUESTION)
    return text if at < 0 else text[:at]


def resolve_inference(scfg) -> str:
    """student.inference -> "vllm" or "hf" (auto: vllm when importable and the student is LoRA)."""
    if scfg.lora is None:
        return "hf"
    if scfg.inference != "auto":
        return scfg.inference
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


@dataclass(frozen=True)
class Plan:
    """What one score() call runs."""
    decode: str | None
    """Path of the greedy decode ("vllm"/"hf"), None when no needed column starts from it."""
    loss_from_decode: bool
    """`loss` from the decode's own logprobs (vllm) instead of a forced pass."""
    forced_own: bool
    """HF teacher-forced pass over prompt + greedy answer (entropy, grad_embed, hf loss)."""
    grad_embed: bool
    loss_gt: str | None
    reward: bool
    sample: str | None = None
    """Path of the n sampled answers per prompt (pass_rate), None when not needed."""

    @property
    def paths(self) -> set[str]:
        used = {self.decode, self.loss_gt, self.sample} | \
            ({"hf"} if self.forced_own or self.reward else set())
        return used - {None}


def plan(needs, *, inference: str, vllm_loss_gt: bool = False, reward_model: str | None = None
         ) -> Plan:
    needs = set(needs)
    if unknown := needs - NEEDS:
        raise ValueError(f"unknown score need(s) {sorted(unknown)}; known: {sorted(NEEDS)}")
    decode = inference if needs & DECODED else None
    vllm_loss = decode == "vllm" and "loss" in needs
    return Plan(decode=decode, loss_from_decode=vllm_loss,
                forced_own=bool(needs & {"entropy", "grad_embed"}) or ("loss" in needs and not vllm_loss),
                grad_embed="grad_embed" in needs,
                loss_gt=("vllm" if inference == "vllm" and vllm_loss_gt else "hf")
                if "loss_gt" in needs else None,
                reward="reward" in needs and reward_model not in (None, "verifier"),
                sample=inference if "pass_rate" in needs else None)


class ScorerWorker:
    def __init__(self, *, rank: int, world_size: int, num_cpus: float, cfg, batch_size: int = 16):
        set_threads(num_cpus)
        from transformers import AutoTokenizer

        self.rank, self.cfg, self.scfg = rank, cfg, cfg.student
        self.batch_size = batch_size
        self.inference = resolve_inference(cfg.student)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.scfg.model))
        self._hf = self._vllm = None
        self._adapter = None  # the current LoRA state, for a path built after it was pushed
        if self.inference == "vllm":
            self.vllm  # noqa: B018 -- start the engine now (30-50 s), not inside the first call
        else:
            self.hf  # noqa: B018

    # ------------------------------------------------------------------ paths (built on first use)
    @property
    def hf(self):
        if self._hf is None:
            from activesyn_ray.student.hf_scorer import HFScorer

            self._hf = HFScorer(cfg=self.cfg, tokenizer=self.tokenizer, batch_size=self.batch_size)
            if self._adapter is not None:
                self._hf.load_adapter(self._adapter)
        return self._hf

    @property
    def vllm(self):
        if self._vllm is None:
            from activesyn_ray.student.vllm_scorer import VllmScorer

            self._vllm = VllmScorer(cfg=self.cfg, tokenizer=self.tokenizer)
            if self._adapter is not None:
                self._vllm.load_adapter(self._adapter)
        return self._vllm

    def set_learnability(self, *, n: int, temperature: float) -> None:
        """Change selection.learnability for later calls (benchmarks and tests sweep it)."""
        self.cfg = self.cfg.model_copy(deep=True)
        self.cfg.selection.learnability.n, self.cfg.selection.learnability.temperature = n, temperature

    def paths(self) -> list[str]:
        """The paths built so far (for tests and memory reports)."""
        return [name for name, p in (("hf", self._hf), ("vllm", self._vllm)) if p is not None]

    # ------------------------------------------------------------------ weights
    def load_adapter(self, state: dict[str, torch.Tensor] | bytes | None) -> None:
        """Replace ONLY the adapter weights (the base stays); None = score with the base model.
        bytes: the checkpoint's adapter file, as the pool sends it (student/adapter_sync.py).
        With lora: null, `state` is every weight (HF path only; not kept here)."""
        if isinstance(state, bytes):
            state = adapter_sync.tensors(state)
        if self.scfg.lora is not None:
            self._adapter = state
        for path in (self._hf, self._vllm):
            if path is not None:
                path.load_adapter(state)

    def weight_bytes(self) -> int:
        """Bytes of the base weights in the scorer's dtype (what a full-weight sync would move),
        from the model's config on the meta device: no weights are loaded for it."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from activesyn_ray.devices import resolve_dtype

        config = AutoConfig.from_pretrained(resolve_model(self.scfg.model))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        size = torch.tensor([], dtype=resolve_dtype(self.scfg.dtype)).element_size()
        return sum(p.numel() for p in model.parameters()) * size

    def peak_rss(self) -> dict:
        return {"paths": self.paths(), "peak_rss_bytes": peak_rss_bytes()}

    # ------------------------------------------------------------------ work
    def _decode_text(self, ans: list[int]) -> str:
        return self.tokenizer.decode(ans, skip_special_tokens=True)

    def _greedy(self, prompts, *, on: str, with_loss: bool = False):
        if on == "vllm":
            return self.vllm.greedy(prompts, with_loss=with_loss)
        return self.hf.greedy(prompts), None

    def generate(self, examples: list[dict]) -> list[str]:
        """Greedy completions of Task.prompt(question) (evaluation), on the inference path."""
        prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in examples]
        answers, _ = self._greedy(prompts, on=self.inference)
        return [self._decode_text(a) for a in answers]

    def score(self, examples: list[dict], needs: list[str] | set[str] = ()) -> list[dict]:
        """`examples`: {"question", "answer" (reference target text)} dicts, and for pass_rate
        optionally "shots" (sample_prompt_ids); one dict out each with the needed columns (and
        answer_text whenever the answer was decoded)."""
        return self._score_rows(examples, needs)

    def evaluate_and_score(self, eval_items: list[dict], pool_items: list[dict],
                           needs: list[str] | set[str]) -> dict:
        """Evaluation of the current adapter AND the scores of the seed pool under it, in one call
        (coordinator: evaluate round t + score for round t+1). On the vLLM path the greedy answers
        of both sets come from ONE engine pass (one batch for the scheduler); on the HF path the two
        sets keep their own padded batches, so every number equals the separate calls bit for bit
        (HF generate's left padding makes batch composition matter). Returns {"completions": [...],
        "rows": [...], "seconds": {"eval": s, "score": s}}."""
        t0 = time.perf_counter()
        p = self._plan(needs)
        eval_prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in eval_items]
        if p.decode == "vllm" and self.inference == "vllm":
            pool_prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in pool_items]
            answers, losses = self.vllm.greedy(eval_prompts + pool_prompts,
                                               with_loss=p.loss_from_decode)
            n = len(eval_prompts)
            completions = [self._decode_text(a) for a in answers[:n]]
            t1 = time.perf_counter()
            rows = self._score_rows(pool_items, needs, decoded=(
                pool_prompts, answers[n:], None if losses is None else losses[n:]))
        else:
            answers, _ = self._greedy(eval_prompts, on=self.inference)
            completions = [self._decode_text(a) for a in answers]
            t1 = time.perf_counter()
            rows = self._score_rows(pool_items, needs)
        # vLLM: "eval" holds the shared decode of both sets, "score" only the HF-side columns
        return {"completions": completions, "rows": rows,
                "seconds": {"eval": t1 - t0, "score": time.perf_counter() - t1}}

    def _plan(self, needs) -> Plan:
        # the vLLM path (built at start-up when it is the inference path) knows whether its
        # adapter mode lets it compute loss_gt (vllm_scorer.vllm_loss_gt)
        vllm_loss_gt = self.inference == "vllm" and self.vllm.loss_gt
        return plan(needs, inference=self.inference, vllm_loss_gt=vllm_loss_gt,
                    reward_model=self.cfg.selection.reward_model)

    def _sample_room(self) -> int:
        """Prompt tokens a sampled answer's prompt may take, the same on both paths: the vLLM
        path's window (student.vllm.max_model_len, capped at the model's context) less the answer,
        so shots that do not fit are left out whole, never cut by vLLM (HF would not cut them)."""
        from activesyn_ray.teacher.engines.base import model_context_len

        ctx = model_context_len(resolve_model(self.scfg.model))
        window = min(self.scfg.vllm.max_model_len, ctx) if ctx else self.scfg.vllm.max_model_len
        return max(1, window - self.scfg.max_new_tokens)

    def _score_rows(self, examples: list[dict], needs, decoded=None) -> list[dict]:
        """decoded: (prompts, greedy answers, losses or None) already computed on the plan's decode
        path (the fused call), instead of decoding here."""
        p = self._plan(needs)
        rows: list[dict] = [{} for _ in examples]
        # tokenized once for the greedy decode and the sampled answers alike
        if decoded is not None:
            prompts = decoded[0]
        elif p.decode or p.sample:
            prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in examples]
        if p.decode:
            if decoded is not None:
                _, answers, losses = decoded
            else:
                answers, losses = self._greedy(prompts, on=p.decode, with_loss=p.loss_from_decode)
            # max_new_tokens >= 1, so an empty answer cannot happen; guard the forced pass anyway
            answers = [a or [self.tokenizer.eos_token_id] for a in answers]
            texts = [self._decode_text(a) for a in answers]
            for r, t in zip(rows, texts):
                r["answer_text"] = t
            if losses is not None:
                for r, v in zip(rows, losses):
                    r["loss"] = v
            if p.forced_own:
                forced = self.hf.own_answer(prompts, answers, grad_embed=p.grad_embed)
                # the pass yields loss and entropy together: keep both (free, and recorded in
                # scores.jsonl for the rank-correlation report even when BADGE asked only for
                # embeddings); a loss already read off the decode stays
                for r, f in zip(rows, forced):
                    r.update({k: v for k, v in f.items() if k not in r})
            if p.reward:
                for r, v in zip(rows, self.hf.rewards(examples, texts)):
                    r["reward"] = v
        if p.sample:
            lc = self.cfg.selection.learnability
            # StudentPool adds `shots` to the items when selection.learnability.shots > 0
            shots = [ex.get("shots") or () for ex in examples]
            if any(shots):
                room = self._sample_room()
                sample_prompts = [sample_prompt_ids(self.tokenizer, ex["question"], s, max_len=room)
                                  for ex, s in zip(examples, shots)]
            else:
                sample_prompts = prompts
            sampled = (self.vllm if p.sample == "vllm" else self.hf).sample(
                sample_prompts, n=lc.n, temperature=lc.temperature, seed=self.cfg.seed)
            for r, answers, s in zip(rows, sampled, shots):
                texts = [self._decode_text(a) for a in answers]
                r["sampled_texts"] = [cut_at_next_question(t) for t in texts] if s else texts
        if p.loss_gt:
            gt = (self.vllm if p.loss_gt == "vllm" else self.hf).reference_loss(examples)
            for r, v in zip(rows, gt):
                r["loss_gt"] = v
        return rows
