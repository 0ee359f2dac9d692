"""SFT features: `Task.prompt(question) + Task.target(example) + eos`, loss on the answer only.

Prompt and target are tokenized SEPARATELY and concatenated, so the prompt/answer boundary is the
same token boundary the scorers generate from (a joint BPE pass could merge across it).
The functions that make tensors import torch themselves: the run's coordinator uses the token ids
only (scoring prompts) and starts without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from activesyn_ray.tasks.base import Task

if TYPE_CHECKING:
    import torch

IGNORE = -100  # label value torch's cross-entropy skips: prompt tokens and padding


def prompt_ids(tokenizer, question: str) -> list[int]:
    # add_special_tokens: a BOS where the model was trained with one (the char tokenizer adds none)
    return tokenizer(Task.prompt(question), add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, text: str, *, eos: bool = True) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if eos else ids


def fit(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Cut to max_len: the answer's tail goes first, but at least half the window stays answer
    (keeping the prompt's END), so an over-long question never leaves an example with no loss."""
    if len(prompt) + len(answer) <= max_len:
        return prompt, answer
    keep_ans = min(len(answer), max(max_len - len(prompt), max_len // 2))
    keep_prompt = max_len - keep_ans
    return prompt[len(prompt) - keep_prompt:], answer[:keep_ans]


def encode(tokenizer, example: dict, max_len: int) -> tuple[list[int], list[int]]:
    """One `{"question", "target"}` dict -> (input_ids, labels) with the prompt masked. A dict with
    `prompt_ids` instead of `question` brings its prompt already tokenized (a teacher's chat-wrapped
    generate prompt, teacher/make.py)."""
    prompt = example["prompt_ids"] if "prompt_ids" in example else \
        prompt_ids(tokenizer, example["question"])
    p, a = fit(list(prompt), answer_ids(tokenizer, example["target"]), max_len)
    return p + a, [IGNORE] * len(p) + a


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding: real tokens keep positions 0..n-1 and, causally, never see the pads."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """A micro batch as ONE row, no padding: the examples back to back, positions restarting at 0
    for each. Given position_ids and no attention_mask, transformers' packed-sequence detection
    masks attention to each example's own earlier tokens, so every example computes what it would
    alone (the trainer checks this once per model: TrainerWorker._packing_works). `keep`: the
    positions whose next token is labelled (the only logits the loss needs); `targets` those
    tokens, `segment` the example each belongs to."""
    import torch

    ids, pos, seg, lab = [], [], [], []
    for j, (x, y) in enumerate(rows):
        ids += x
        pos += range(len(x))
        seg += [j] * len(x)
        lab += y
    seg_t, lab_t = torch.tensor(seg), torch.tensor(lab)
    # logits at p predict token p + 1 of the same example
    nxt = torch.cat([lab_t[1:], torch.tensor([IGNORE])])
    same = torch.cat([seg_t[1:] == seg_t[:-1], torch.tensor([False])])
    keep = ((nxt != IGNORE) & same).nonzero().squeeze(1)
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "keep": keep,
            "targets": nxt[keep], "segment": seg_t[keep], "n": torch.tensor(len(rows))}


def packed_nll(logits: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """per_example_nll for a packed row: `logits` are those at packed["keep"] ([n_kept, vocab])."""
    import torch

    nll = torch.nn.functional.cross_entropy(logits.float(), packed["targets"], reduction="none")
    n, seg = int(packed["n"]), packed["segment"]
    total = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, seg, nll)
    count = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add(0, seg, torch.ones_like(nll))
    return total / count.clamp(min=1)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding for generation: every prompt ends at the last column."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over each row's labelled tokens (shape [batch]).

    Each example weighs the same whatever its length; this is also what makes N ranks x micro m
    compute exactly the gradient of 1 rank x micro N*m (a token mean would weight by token count).
    """
    import torch

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels,
                                            ignore_index=IGNORE, reduction="none")
    count = (shift_labels != IGNORE).sum(1).clamp(min=1)
    return nll.sum(1) / count
