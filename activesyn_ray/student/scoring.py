"""Scorer shards: the frozen base model plus a LoRA wrapper whose weights are replaced each round.

Per example the scorer produces what the selection strategies read (selection/base.py):
  answer_text  the student's greedy completion (stops at eos, at most student.max_new_tokens)
  loss         mean NLL of those greedy tokens            (uncertainty about its own answer)
  loss_gt      mean NLL of the reference target tokens    (how far it is from the right answer)
  entropy      mean next-token entropy over the greedy tokens
  grad_embed   BADGE: mean over greedy tokens of (softmax(z_t) - onehot(y_t)) (x) h_t, the gradient
               of the loss w.r.t. the output layer, with the vocabulary factor projected by a fixed
               seeded Gaussian to 16 dims -> 16 * hidden values       (only when asked for)
  reward       a sequence-classification reward model's score of prompt + greedy answer (when asked)

Examples are batched with left padding for generation and right padding for the teacher-forced
passes; results do not depend on how examples are split into shards (tests check S=2 == S=1).
"""

from __future__ import annotations

import contextlib

import torch

from activesyn_ray.actors import set_threads
from activesyn_ray.models import resolve_model
from activesyn_ray.student.data import IGNORE, collate, encode, left_pad, per_example_nll, prompt_ids
from activesyn_ray.student.trainer import peft_lora_config, resolve_dtype
from activesyn_ray.tasks.base import Task

BADGE_DIMS = 16  # projected vocabulary dims of the BADGE embedding (size = BADGE_DIMS * hidden)


class ScorerWorker:
    def __init__(self, *, rank: int, world_size: int, num_cpus: float, cfg, batch_size: int = 16):
        set_threads(num_cpus)
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.rank, self.cfg, self.scfg, self.batch_size = rank, cfg, cfg.student, batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(self.scfg.dtype, cuda=self.device.type == "cuda")
        path = resolve_model(self.scfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device)
        model.requires_grad_(False)
        self.base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self._base_state = None
        if self.scfg.lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_lora_config(self.scfg.lora))
        else:  # full finetune: keep the base weights to return to on load_adapter(None)
            self._base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.model = model.eval()
        # A fresh config, so nothing from the model's own generation_config.json (sampling,
        # repetition penalty) changes what "greedy" means.
        self._gen_config = GenerationConfig(
            max_new_tokens=self.scfg.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id)
        self.adapter_on = False  # no adapter pushed yet: score with the base model
        self._proj = None
        self._reward = None
        self._h = None  # lm_head input, captured by a hook (the h_t of BADGE)
        self.model.get_output_embeddings().register_forward_hook(self._capture_h)

    def _capture_h(self, module, args, output):
        self._h = args[0]

    # ------------------------------------------------------------------ weights
    def load_adapter(self, state: dict[str, torch.Tensor] | None) -> None:
        """Replace ONLY the adapter weights (the base stays); None = score with the base model."""
        if self.scfg.lora is None:
            self.model.load_state_dict(self._base_state if state is None else state)
            return
        if state is None:
            self.adapter_on = False
            return
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.model, {k: v.to(self.dtype) for k, v in state.items()})
        if res.unexpected_keys:
            raise ValueError(f"adapter does not fit this scorer's LoRA layout: unexpected keys "
                             f"{res.unexpected_keys[:3]}...")
        self.adapter_on = True

    def weight_bytes(self) -> int:
        """Bytes of the base weights (what a full-weight sync would move)."""
        return self.base_bytes

    def _maybe_disabled(self):
        if self.scfg.lora is not None and not self.adapter_on:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ generation
    def _greedy(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy answer token ids per prompt, cut after the first eos (kept: it was predicted)."""
        tok = self.tokenizer
        ids, mask = left_pad(prompts, tok.pad_token_id)
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=self._gen_config)
        answers = []
        for row in out[:, ids.shape[1]:].tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id) + 1]
            answers.append(row)
        return answers

    def _decode(self, ans: list[int]) -> str:
        return self.tokenizer.decode(ans, skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, examples: list[dict]) -> list[str]:
        """Greedy completions of Task.prompt(question) (evaluation)."""
        out: list[str] = []
        with self._maybe_disabled():
            for i in range(0, len(examples), self.batch_size):
                chunk = examples[i:i + self.batch_size]
                prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in chunk]
                out += [self._decode(a) for a in self._greedy(prompts)]
        return out

    # ------------------------------------------------------------------ scoring
    def _projection(self, vocab: int) -> torch.Tensor:
        if self._proj is None:  # same seed on every shard: embeddings are comparable across shards
            gen = torch.Generator().manual_seed(self.cfg.seed + 7)
            self._proj = (torch.randn(vocab, BADGE_DIMS, generator=gen) / BADGE_DIMS ** 0.5
                          ).to(self.device)
        return self._proj

    def _own_answer_scores(self, prompts, answers, grad_embed: bool) -> list[dict]:
        """One teacher-forced pass over prompt + greedy answer: loss, entropy, BADGE."""
        rows = [(p + a, [IGNORE] * len(p) + a) for p, a in zip(prompts, answers)]
        batch = {k: v.to(self.device) for k, v in collate(rows, self.tokenizer.pad_token_id).items()}
        labels = batch.pop("labels")
        logits = self.model(**batch).logits
        # position t-1 predicts label t: keep only the answer positions
        sel = labels[:, 1:] != IGNORE
        z = logits[:, :-1][sel].float()                     # [tokens, vocab]
        y = labels[:, 1:][sel]                              # [tokens]
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        nll = -logp.gather(1, y[:, None])[:, 0]
        ent = -(p * logp).sum(-1)
        row = sel.nonzero()[:, 0]                           # which example each token belongs to
        n = len(rows)
        count = torch.bincount(row, minlength=n).clamp(min=1).float()
        loss = torch.zeros(n, device=z.device).index_add_(0, row, nll) / count
        entropy = torch.zeros(n, device=z.device).index_add_(0, row, ent) / count
        res = [{"loss": float(loss[i]), "entropy": float(entropy[i])} for i in range(n)]
        if grad_embed:
            proj = self._projection(z.shape[1])
            u = p @ proj - proj[y]                          # R (softmax - onehot): [tokens, 16]
            h = self._h[:, :-1][sel].float()                # [tokens, hidden]
            g = torch.einsum("tk,th->tkh", u, h).flatten(1)  # per-token gradient, projected
            emb = torch.zeros(n, g.shape[1], device=g.device).index_add_(0, row, g) / count[:, None]
            for i in range(n):
                res[i]["grad_embed"] = emb[i].cpu().numpy()
        return res

    def _reference_loss(self, chunk: list[dict]) -> list[float]:
        feats = [encode(self.tokenizer, {"question": ex["question"], "target": ex["answer"]},
                        self.scfg.max_seq_len) for ex in chunk]
        batch = {k: v.to(self.device) for k, v in collate(feats, self.tokenizer.pad_token_id).items()}
        labels = batch.pop("labels")
        return per_example_nll(self.model(**batch).logits, labels).tolist()

    def _reward_model(self):
        if self._reward is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = resolve_model(self.cfg.selection.reward_model)
            rtok = AutoTokenizer.from_pretrained(path)
            rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=self.dtype)
            if rm.config.pad_token_id is None:  # needed to find each row's last token in a batch
                rm.config.pad_token_id = rtok.pad_token_id if rtok.pad_token_id is not None \
                    else rtok.eos_token_id
            self._reward = (rtok, rm.to(self.device).eval().requires_grad_(False))
        return self._reward

    def _rewards(self, chunk: list[dict], texts: list[str]) -> list[float]:
        rtok, rm = self._reward_model()
        pad = rm.config.pad_token_id
        rows = [(rtok(Task.prompt(ex["question"]) + t, add_special_tokens=True)["input_ids"], [])
                for ex, t in zip(chunk, texts)]
        batch = collate(rows, pad)
        out = rm(input_ids=batch["input_ids"].to(self.device),
                 attention_mask=batch["attention_mask"].to(self.device)).logits
        return out[:, 0].float().tolist()

    @torch.no_grad()
    def score(self, examples: list[dict], needs: list[str] | set[str] = ()) -> list[dict]:
        """`examples`: {"question", "answer" (reference target text)} dicts; one dict out each."""
        needs = set(needs)
        want_reward = "reward" in needs and self.cfg.selection.reward_model not in (None, "verifier")
        out: list[dict] = []
        with self._maybe_disabled():
            for i in range(0, len(examples), self.batch_size):
                chunk = examples[i:i + self.batch_size]
                prompts = [prompt_ids(self.tokenizer, ex["question"]) for ex in chunk]
                answers = self._greedy(prompts)
                if not all(answers):  # max_new_tokens >= 1, so this cannot happen; guard anyway
                    answers = [a or [self.tokenizer.eos_token_id] for a in answers]
                res = self._own_answer_scores(prompts, answers, "grad_embed" in needs)
                gt = self._reference_loss(chunk)
                texts = [self._decode(a) for a in answers]
                rewards = self._rewards(chunk, texts) if want_reward else None
                for j, r in enumerate(res):
                    r["answer_text"] = texts[j]
                    r["loss_gt"] = gt[j]
                    if rewards is not None:
                        r["reward"] = rewards[j]
                out += res
        return out

