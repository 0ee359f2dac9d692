"""The Hugging Face path of a scorer shard: the frozen base + a PEFT LoRA wrapper (or, with
`lora: null`, the whole model) in torch, with the adapter weights replaced each round.

It can do every piece of scoring work (see student/scoring.py for which column needs which):
  greedy        answer token ids per prompt (`generate`, left padding), cut after the first eos
  own_answer    one teacher-forced pass over prompt + a given answer: `loss` (mean NLL of those
                tokens), `entropy` (mean exact next-token entropy over them) and BADGE `grad_embed`:
                mean over answer tokens of (softmax(z_t) - onehot(y_t)) (x) h_t, the gradient of the
                loss w.r.t. the output layer, with the vocabulary factor projected by a fixed seeded
                Gaussian to 16 dims -> 16 * hidden values
  reference     one teacher-forced pass over prompt + reference target: `loss_gt`
  rewards       a sequence-classification reward model's score of prompt + answer text
Examples are processed in chunks of `batch_size` (right padding for the teacher-forced passes);
results do not depend on how examples are split into shards (tests check S=2 == S=1).
Under student.dtype bf16-mixed the weights stay fp32 and every forward pass runs under the
trainer's autocast: the scores are those of the function the adapter was trained as, and a CPU or
GPU with bf16 units scores faster too (log-softmax, entropy and the losses are fp32 either way).
"""

from __future__ import annotations

import contextlib

import torch

from activesyn_ray.devices import autocast, student_precision, weight_dtype
from activesyn_ray.models import resolve_model
from activesyn_ray.student.data import IGNORE, collate, encode, left_pad, per_example_nll
from activesyn_ray.student.scoring import BADGE_DIMS
from activesyn_ray.student.trainer import peft_lora_config
from activesyn_ray.tasks.base import Task


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class HFScorer:
    def __init__(self, *, cfg, tokenizer, batch_size: int):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.cfg, self.scfg, self.tokenizer, self.batch_size = cfg, cfg.student, tokenizer, batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision, _ = student_precision(self.scfg.dtype, cuda=self.device.type == "cuda")
        self.dtype = weight_dtype(self.precision)  # bf16 only for bf16-true
        model = AutoModelForCausalLM.from_pretrained(resolve_model(self.scfg.model),
                                                     dtype=self.dtype).to(self.device)
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
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id)
        self.adapter_on = False  # no adapter loaded yet: score with the base model
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

    def _maybe_disabled(self):
        if self.scfg.lora is not None and not self.adapter_on:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def _autocast(self):
        """bf16 matmuls for bf16-mixed, around model calls only: what the scores compute from the
        logits (log-softmax, BADGE's projection) stays fp32."""
        return autocast(self.precision, cuda=self.device.type == "cuda")

    # ------------------------------------------------------------------ work
    @torch.no_grad()
    def greedy(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy answer token ids per prompt, cut after the first eos (kept: it was predicted)."""
        eos, answers = self.tokenizer.eos_token_id, []
        with self._maybe_disabled():
            for part in chunks(prompts, self.batch_size):
                ids, mask = left_pad(part, self.tokenizer.pad_token_id)
                with self._autocast():
                    out = self.model.generate(input_ids=ids.to(self.device),
                                              attention_mask=mask.to(self.device),
                                              generation_config=self._gen_config)
                for row in out[:, ids.shape[1]:].tolist():
                    answers.append(row[:row.index(eos) + 1] if eos in row else row)
        return answers

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], *, n: int, temperature: float, seed: int
               ) -> list[list[list[int]]]:
        """n sampled answers per prompt (token ids, cut after eos), seeded so a shard's draw is
        reproducible; the learnability strategy's pass rate comes from them."""
        from transformers import GenerationConfig

        eos, out = self.tokenizer.eos_token_id, []
        cfg = GenerationConfig(max_new_tokens=self.scfg.max_new_tokens, do_sample=True,
                               temperature=temperature, top_k=0, top_p=1.0,
                               num_return_sequences=n, eos_token_id=eos,
                               pad_token_id=self.tokenizer.pad_token_id,
                               bos_token_id=self.tokenizer.bos_token_id)
        torch.manual_seed(seed)
        with self._maybe_disabled():
            for part in chunks(prompts, max(1, self.batch_size // n)):
                ids, mask = left_pad(part, self.tokenizer.pad_token_id)
                with self._autocast():
                    gen = self.model.generate(input_ids=ids.to(self.device),
                                              attention_mask=mask.to(self.device),
                                              generation_config=cfg)
                rows = gen[:, ids.shape[1]:].tolist()
                for i in range(len(part)):
                    out.append([r[:r.index(eos) + 1] if eos in r else r
                                for r in rows[i * n:(i + 1) * n]])
        return out

    def _projection(self, vocab: int) -> torch.Tensor:
        if self._proj is None:  # same seed on every shard: embeddings are comparable across shards
            gen = torch.Generator().manual_seed(self.cfg.seed + 7)
            self._proj = (torch.randn(vocab, BADGE_DIMS, generator=gen) / BADGE_DIMS ** 0.5
                          ).to(self.device)
        return self._proj

    @torch.no_grad()
    def own_answer(self, prompts, answers, *, grad_embed: bool) -> list[dict]:
        """Teacher-forced passes over prompt + answer: loss, entropy (and BADGE when asked)."""
        out: list[dict] = []
        with self._maybe_disabled():
            for at in range(0, len(prompts), self.batch_size):
                out += self._own_answer_batch(prompts[at:at + self.batch_size],
                                              answers[at:at + self.batch_size], grad_embed)
        return out

    def _own_answer_batch(self, prompts, answers, grad_embed: bool) -> list[dict]:
        rows = [(p + a, [IGNORE] * len(p) + a) for p, a in zip(prompts, answers)]
        batch = {k: v.to(self.device) for k, v in collate(rows, self.tokenizer.pad_token_id).items()}
        labels = batch.pop("labels")
        with self._autocast():
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

    @torch.no_grad()
    def reference_loss(self, examples: list[dict]) -> list[float]:
        """`loss_gt`: mean NLL of each reference target, one teacher-forced pass, no decoding."""
        out: list[float] = []
        with self._maybe_disabled():
            for part in chunks(examples, self.batch_size):
                feats = [encode(self.tokenizer, {"question": ex["question"], "target": ex["answer"]},
                                self.scfg.max_seq_len) for ex in part]
                batch = {k: v.to(self.device)
                         for k, v in collate(feats, self.tokenizer.pad_token_id).items()}
                labels = batch.pop("labels")
                with self._autocast():
                    logits = self.model(**batch).logits
                out += per_example_nll(logits, labels).tolist()
        return out

    # ------------------------------------------------------------------ reward model
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

    @torch.no_grad()
    def rewards(self, examples: list[dict], texts: list[str]) -> list[float]:
        rtok, rm = self._reward_model()
        out: list[float] = []
        for at in range(0, len(examples), self.batch_size):
            rows = [(rtok(Task.prompt(ex["question"]) + t, add_special_tokens=True)["input_ids"], [])
                    for ex, t in zip(examples[at:at + self.batch_size],
                                     texts[at:at + self.batch_size])]
            batch = collate(rows, rm.config.pad_token_id)
            with self._autocast():
                logits = rm(input_ids=batch["input_ids"].to(self.device),
                            attention_mask=batch["attention_mask"].to(self.device)).logits
            out += logits[:, 0].float().tolist()
        return out
