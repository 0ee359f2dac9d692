"""Student: real DeepSpeed + PEFT LoRA trainer ranks and scorer shards in Ray actors, tiny model, CPU.

    ACTIVESYN_CACHE=/tmp/asr_cache pytest tests/test_student.py

The `slow` tests start Ray (~1-2 min in all on 2 cores); the others are pure functions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activesyn_ray.config import ActorResources, config_from_dict
from activesyn_ray.student.data import IGNORE, collate, encode, fit, per_example_nll
from activesyn_ray.student.trainer import epoch_slices
from activesyn_ray.tasks import build_task

LEVEL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
         "allow_parentheses": False, "allow_negation": False}


def make_cfg(*, ranks: int = 1, scorers: int = 2, micro: int = 8, reward_model: str | None = None,
             inference: str = "hf", **student):
    return config_from_dict({
        "seed": 0,
        "task": {"kind": "gym", "name": "basic_arithmetic", "levels": [LEVEL], "seed_size": 32,
                 "test_size": 8},
        "student": {"model": "tiny", "epochs": 3, "lr": 3e-3, "micro_batch_size": micro,
                    "zero_stage": 2, "max_seq_len": 64, "max_new_tokens": 8,
                    "inference": inference, **student},
        "selection": {"strategy": "loss", "reward_model": reward_model},
        "resources": {"trainer": {"num_workers": ranks, "num_cpus": 1},
                      "scorers": {"num_workers": scorers, "num_cpus": 0.5}},
    })


@pytest.fixture(scope="module")
def task_data():
    cfg = make_cfg()
    task = build_task(cfg.task, seed=0)
    seeds, test = task.splits()
    return task, seeds, test


# ------------------------------------------------------------------------------ pure functions
def test_encode_masks_prompt_and_ends_with_eos():
    from transformers import AutoTokenizer

    from activesyn_ray.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    ids, labels = encode(tok, {"question": "Calculate 1 + 2.", "target": " #### 3"}, 64)
    n_prompt = len(tok("Question: Calculate 1 + 2.\nAnswer:")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert tok.decode(labels[n_prompt:-1]) == " #### 3" and labels[-1] == tok.eos_token_id
    assert ids[n_prompt:] == labels[n_prompt:]
    # an over-long prompt keeps its end and at least half the window for the answer
    p, a = fit(list(range(100)), list(range(200, 210)), 16)
    assert a == list(range(200, 208)) and p == list(range(92, 100))
    assert fit([1, 2], [3, 4, 5], 16) == ([1, 2], [3, 4, 5])


def test_per_example_loss_weighs_examples_equally():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, 1, 2, 3, 4], [IGNORE, IGNORE, IGNORE, IGNORE, 5]])
    per = per_example_nll(logits, labels)
    lp = torch.log_softmax(logits, -1)
    assert torch.allclose(per[1], -lp[1, 3, 5])
    assert torch.allclose(per[0], -torch.stack([lp[0, t, labels[0, t + 1]] for t in range(4)]).mean())
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([5], [IGNORE])], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m"])
def test_packed_rows_give_the_padded_losses(model, task_data):
    """data.pack: a micro batch as one row (positions restart per example, head only where a label
    is) gives each example the loss it has in a padded batch; the padding is gone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from activesyn_ray.models import resolve_model
    from activesyn_ray.student.data import pack, packed_nll

    task, seeds, _ = task_data
    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [encode(tok, {"question": e.question, "target": task.target(e)}, 64) for e in seeds[:6]]
    rows.append(encode(tok, {"question": "x" * 200, "target": " #### 1"}, 16))  # cut to 16
    batch = collate(rows, tok.pad_token_id)
    labels = batch.pop("labels")
    p = pack(rows)
    assert p["input_ids"].numel() == sum(len(ids) for ids, _ in rows) < labels.numel()
    assert len(p["keep"]) == int((labels[:, 1:] != IGNORE).sum())
    with torch.no_grad():
        padded = per_example_nll(lm(**batch, use_cache=False).logits, labels)
        packed = packed_nll(lm(input_ids=p["input_ids"], position_ids=p["position_ids"],
                               logits_to_keep=p["keep"], use_cache=False).logits[0], p)
        # without restarting positions the examples would see each other: the check can fail
        mixed = packed_nll(lm(input_ids=p["input_ids"], logits_to_keep=p["keep"],
                              use_cache=False).logits[0], p)
    np.testing.assert_allclose(packed.numpy(), padded.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(mixed.numpy() - padded.numpy()).max() > 1e-2


def test_scoring_plan_runs_only_what_the_needs_imply():
    from activesyn_ray.student.scoring import plan, resolve_inference

    gt = plan({"loss_gt"}, inference="hf")  # one teacher-forced pass, no decoding
    assert gt.decode is None and not gt.forced_own and gt.loss_gt == "hf" and gt.paths == {"hf"}
    own = plan({"loss"}, inference="vllm")  # vLLM's own logprobs: no HF model at all
    assert own.decode == "vllm" and own.loss_from_decode and not own.forced_own
    assert own.paths == {"vllm"}
    ent = plan({"loss", "entropy", "loss_gt"}, inference="vllm", vllm_loss_gt=False)
    assert ent.forced_own and ent.loss_gt == "hf" and ent.paths == {"vllm", "hf"}
    assert plan({"loss"}, inference="hf").forced_own  # hf: loss from the forced pass
    assert not plan({"reward"}, inference="hf", reward_model="verifier").reward
    assert plan({"reward"}, inference="hf", reward_model="tiny-reward").reward
    assert plan(set(), inference="vllm").paths == set()
    with pytest.raises(ValueError, match="unknown score need"):
        plan({"los"}, inference="hf")
    full = make_cfg(lora=None).student
    assert resolve_inference(full) == "hf"  # full finetuning never runs on vLLM
    assert resolve_inference(make_cfg(inference="vllm").student) == "vllm"


def _tiny_lora_model():
    """(lora config, tiny base folder, PEFT model) with B drawn at random: B = 0, its init, would
    make any adapter loader or merge look right."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from activesyn_ray.models import resolve_model
    from activesyn_ray.student.trainer import peft_lora_config

    lora = make_cfg().student.lora
    base_dir = resolve_model("tiny")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), peft_lora_config(lora))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return lora, base_dir, model


def test_pushed_adapter_state_written_as_a_peft_folder(tmp_path):
    """What the vLLM scorer writes for each round (student/vllm_scorer.py) is a real PEFT adapter."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from activesyn_ray.student.vllm_scorer import write_peft_adapter

    lora, base_dir, model = _tiny_lora_model()
    state = get_peft_model_state_dict(model)
    folder = write_peft_adapter(state, tmp_path / "adapter-1", lora=lora, base=str(base_dir))
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json",
                                                        "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert (got - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no LoRA weights"):
        write_peft_adapter({"w": torch.zeros(1)}, tmp_path / "bad", lora=lora, base=str(base_dir))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_file_sent_to_the_scorers_is_the_trainers_adapter_state(dtype, tmp_path):
    """What the pool pushes after a LoRA training (student/adapter_sync.py): the checkpoint's
    adapter file. A scorer must get from it the trainer's adapter_state (fp32 copies of
    get_peft_model_state_dict, under bf16-true too), and the metrics its tensor bytes."""
    from peft import get_peft_model_state_dict

    from activesyn_ray.student import adapter_sync
    from activesyn_ray.student.pool import state_bytes

    _, _, model = _tiny_lora_model()
    model.to(dtype)
    model.save_pretrained(tmp_path / "round-1")
    blob = (tmp_path / "round-1" / adapter_sync.ADAPTER_FILE).read_bytes()
    want = {k: v.detach().to(torch.float32) for k, v in get_peft_model_state_dict(model).items()}
    got = adapter_sync.tensors(blob)
    assert sorted(got) == sorted(want) and any("lora_B" in k for k in got)
    for k in want:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], want[k]), k
    sent = get_peft_model_state_dict(model)  # in the file's dtype
    assert state_bytes(blob) == sum(t.numel() * t.element_size() for t in sent.values()) > 0
    fp32_bytes = state_bytes(want)
    assert state_bytes(blob) == (fp32_bytes // 2 if dtype == torch.bfloat16 else fp32_bytes)


def test_merged_adapter_weights_equal_peft_merge(tmp_path):
    """What the vLLM scorer reloads in merge mode (student/vllm_scorer.py, the CPU default) is
    exactly PEFT's merge_and_unload of the same adapter, for every checkpoint weight; bad states
    are refused with the key at fault."""
    from peft import get_peft_model_state_dict

    from activesyn_ray.student.vllm_scorer import MergedAdapter, lora_pairs

    lora, base_dir, model = _tiny_lora_model()
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    pairs = lora_pairs(state)
    want = model.merge_and_unload().state_dict()
    got = dict(MergedAdapter(None, base_dir, lora)._weights(pairs))
    assert set(got) <= set(want) and "model.layers.0.self_attn.q_proj.weight" in got
    changed = 0
    for name, w in got.items():
        torch.testing.assert_close(w.float(), want[name].float(), rtol=0, atol=1e-6, msg=name)
        changed += int(name in pairs)
    assert changed == len(pairs) > 0
    with pytest.raises(ValueError, match="no LoRA weights"):
        lora_pairs({"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="linear layers only; .*lora_embedding_A"):
        lora_pairs({"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(1)})

def test_rank_slices_form_the_one_rank_batches():
    one = epoch_slices(20, rank=0, world_size=1, micro=8, seed=0, round=1, epoch=2)
    two = [epoch_slices(20, rank=r, world_size=2, micro=4, seed=0, round=1, epoch=2) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(b) for b in one]
    assert epoch_slices(20, rank=0, world_size=1, micro=8, seed=0, round=1, epoch=3) != one
    three = [x for r in range(3) for b in epoch_slices(20, rank=r, world_size=3, micro=4, seed=0,
                                                        round=0, epoch=0) for x in b]
    assert len(three) == 21 and set(three) == set(range(20))  # padded by wrapping, like DDP


# ------------------------------------------------------------------------------ Ray actors
@pytest.fixture(scope="module")
def trained(ray_session, task_data):
    """One pool (1 trainer rank, 2 scorer shards), scored with the base model, then trained once."""
    from activesyn_ray.student.pool import StudentPool

    task, seeds, test = task_data
    cfg = make_cfg(reward_model="tiny-reward")
    pool = StudentPool(cfg=cfg, task=task)
    out = {"pool": pool, "cfg": cfg}
    out["base_scores"] = pool.score(seeds, {"loss", "loss_gt"})
    out["loss_before"] = pool.train_loss(seeds)
    out["metrics"] = pool.train(seeds, round=0)
    out["loss_after"] = pool.train_loss(seeds)
    out["scores"] = pool.score(seeds, {"loss", "loss_gt"})
    yield out
    pool.shutdown()


@pytest.mark.slow
def test_training_lowers_loss_and_scorers_get_the_adapter(trained):
    m, pool = trained["metrics"], trained["pool"]
    assert trained["loss_after"] < trained["loss_before"] - 0.3, trained
    assert m["loss_last_epoch"] < m["loss_first_epoch"]
    assert m["steps"] == 3 * 4 and m["samples"] == 3 * 32 and m["samples_per_s"] > 0
    # a fresh LoRA adapter (B = 0) is the base model: scorers before training == trainer before
    assert trained["base_scores"]["loss_gt"].mean() == pytest.approx(trained["loss_before"], abs=1e-4)
    # after the sync the scorers compute exactly the trainer's loss on the reference answers
    assert trained["scores"]["loss_gt"].mean() == pytest.approx(trained["loss_after"], abs=1e-4)
    # only the adapter moved: a small fraction of the model's bytes
    assert 0 < m["adapter_bytes"] < pool.full_weight_bytes() / 4


@pytest.mark.slow
def test_restart_each_round_retrains_from_the_same_init(trained, task_data):
    _, seeds, _ = task_data
    pool, first = trained["pool"], trained["metrics"]
    state1 = pool.adapter_state()
    again = pool.train(seeds, round=0)  # same data, same round: a restart must repeat it exactly
    assert again["loss_first_epoch"] == pytest.approx(first["loss_first_epoch"], abs=1e-6)
    assert again["loss_last_epoch"] == pytest.approx(first["loss_last_epoch"], abs=1e-6)
    state2 = pool.adapter_state()
    assert all(torch.allclose(state1[k], state2[k], atol=1e-6) for k in state1)


@pytest.mark.slow
def test_sharded_scoring_equals_unsharded(trained, task_data):
    import ray

    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.student.scoring import BADGE_DIMS, ScorerWorker

    task, seeds, test = task_data
    pool, cfg = trained["pool"], trained["cfg"]
    single = ActorGroup(ScorerWorker, name="scorer-single",
                        resources=ActorResources(num_workers=1, num_cpus=0.5),
                        init_kwargs=dict(cfg=cfg, batch_size=16))
    try:
        ray.get(single.call("load_adapter", pool.adapter_ref))
        items = [{"question": e.question, "answer": task.target(e)} for e in seeds[:20]]
        needs = ["loss", "loss_gt", "entropy", "grad_embed", "reward"]
        one = single.gather_sharded("score", items, needs=needs)
        two = pool.scorers.gather_sharded("score", items, needs=needs)  # S=2: 10 + 10
        assert [r["answer_text"] for r in one] == [r["answer_text"] for r in two]
        for key in ("loss", "loss_gt", "entropy", "reward"):
            np.testing.assert_allclose([r[key] for r in one], [r[key] for r in two],
                                       rtol=1e-5, atol=1e-5, err_msg=key)
        e1 = np.stack([r["grad_embed"] for r in one])
        e2 = np.stack([r["grad_embed"] for r in two])
        assert e1.shape == (20, BADGE_DIMS * 64) and np.linalg.norm(e1, axis=1).min() > 0
        np.testing.assert_allclose(e1, e2, rtol=1e-4, atol=1e-6)
        # scores are not constant across examples (they could not rank anything otherwise)
        assert np.std([r["loss_gt"] for r in one]) > 0 and np.std([r["reward"] for r in one]) > 0
        # evaluation is sharded the same way
        q = [{"question": e.question} for e in test]
        assert single.gather_sharded("generate", q) == pool.scorers.gather_sharded("generate", q)
        # reward_model: verifier = the task's exact checker on the student's answer, no model
        pool.cfg.selection.reward_model = "verifier"
        try:
            cols = pool.score(seeds[:4], {"reward"})
            assert np.array_equal(cols["reward"], cols["correct"])
        finally:
            pool.cfg.selection.reward_model = "tiny-reward"
        ev = pool.evaluate(test)
        assert ev["n"] == len(test) and len(ev["correct"]) == len(test)
        assert ev["accuracy"] == pytest.approx(np.mean(ev["correct"]))
    finally:
        single.shutdown()


@pytest.mark.slow
def test_saved_adapter_loads_with_peft_and_reproduces_scorer(trained, task_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from activesyn_ray.models import resolve_model

    task, seeds, _ = task_data
    pool, cfg = trained["pool"], trained["cfg"]
    path = pool.save_adapter(tmp_path / "adapter")
    base_dir = resolve_model(cfg.student.model)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), path).eval()
    feats = [encode(tok, {"question": e.question, "target": task.target(e)}, cfg.student.max_seq_len)
             for e in seeds[:12]]
    batch = collate(feats, tok.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        loaded = per_example_nll(model(**batch).logits, labels).numpy()
        with model.disable_adapter():
            base = per_example_nll(model(**batch).logits, labels).numpy()
    scorer = pool.score(seeds[:12], {"loss_gt"})["loss_gt"]
    np.testing.assert_allclose(loaded, scorer, rtol=1e-5, atol=1e-5)
    assert np.abs(loaded - base).max() > 1e-2  # the adapter really changes the model


@pytest.mark.slow
def test_fused_evaluate_and_score_equals_the_separate_calls(trained, task_data):
    """One scorer call per shard for evaluation + pool scores (coordinator: evaluate round t and
    score for t+1) gives what evaluate() and score() give; so does a score started before and
    collected after other work (score_submit, overlapped with training)."""
    task, seeds, test = task_data
    pool = trained["pool"]
    needs = {"loss", "loss_gt", "entropy"}
    ev, cols = pool.evaluate_and_score(test, seeds[:20], needs)
    sep_ev, sep = pool.evaluate(test), pool.score(seeds[:20], needs)
    assert ev["completions"] == sep_ev["completions"] and ev["correct"] == sep_ev["correct"]
    assert len(ev["shard_seconds"]) == 2  # both shards took part
    assert cols["answer_text"] == sep["answer_text"]
    for key in ("loss", "loss_gt", "entropy", "correct"):
        np.testing.assert_array_equal(cols[key], sep[key], err_msg=key)
    assert np.std(cols["loss"]) > 0
    pending = pool.score_submit(seeds[:20], needs)
    later = pending.result()
    for key in ("loss", "loss_gt", "entropy"):
        np.testing.assert_array_equal(later[key], sep[key], err_msg=key)


@pytest.mark.slow
def test_two_ranks_take_the_same_steps_as_one(ray_session, task_data):
    """Same global batch: 2 ranks x micro 4 vs 1 rank x micro 8 (and 2 x micro 2 x accum 2)."""
    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.student.trainer import TrainerWorker

    ray = ray_session
    task, seeds, _ = task_data
    data = [{"question": e.question, "target": task.target(e)} for e in seeds[:16]]
    results = {}
    for name, cfg in {"1x8": make_cfg(ranks=1, micro=8, epochs=2),
                      "2x4": make_cfg(ranks=2, micro=4, epochs=2),
                      "2x2x2": make_cfg(ranks=2, micro=2, grad_accum=2, epochs=2)}.items():
        group = ActorGroup(TrainerWorker, name=f"trainer-{name}", resources=cfg.resources.trainer,
                           init_kwargs=dict(cfg=cfg))
        try:
            addr, port = ray.get(group.actors[0].get_master_addr_port.remote())
            ray.get(group.call("init_distributed", master_addr=addr, master_port=port))
            metrics = ray.get(group.call("train", data, round=3))
            states = ray.get(group.call("adapter_state"))
            results[name] = (metrics[0], states[0], ray.get(group.call("train_loss", data))[0])
        finally:
            group.shutdown()
        for other in states[1:]:  # DeepSpeed keeps the ranks in lockstep
            assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    m1, s1, l1 = results["1x8"]
    assert m1["steps"] == 2 * 2
    assert max(v.abs().max().item() for k, v in s1.items() if "lora_B" in k) > 1e-3  # it trained
    for name in ("2x4", "2x2x2"):
        m, s, loss = results[name]
        assert m["steps"] == m1["steps"]
        assert m["loss_last_epoch"] == pytest.approx(m1["loss_last_epoch"], abs=1e-5)
        assert loss == pytest.approx(l1, abs=1e-5)
        diff = max((s1[k] - s[k]).abs().max().item() for k in s1)
        assert diff < 1e-5, f"{name}: adapter differs from 1 rank by {diff}"


@pytest.mark.slow
def test_full_finetune_without_lora(ray_session, task_data):
    """lora: null trains every weight; the scorer takes the whole state and matches the trainer."""
    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.student.scoring import ScorerWorker
    from activesyn_ray.student.trainer import TrainerWorker

    ray = ray_session
    task, seeds, _ = task_data
    cfg = make_cfg(lora=None, lr=1e-3, epochs=2, zero_stage=1, scorers=1)
    data = [{"question": e.question, "target": task.target(e)} for e in seeds[:16]]
    trainer = ActorGroup(TrainerWorker, name="trainer-full", resources=cfg.resources.trainer,
                         init_kwargs=dict(cfg=cfg))
    scorer = ActorGroup(ScorerWorker, name="scorer-full", resources=cfg.resources.scorers,
                        init_kwargs=dict(cfg=cfg))
    try:
        t = trainer.actors[0]
        addr, port = ray.get(t.get_master_addr_port.remote())
        ray.get(t.init_distributed.remote(master_addr=addr, master_port=port))
        before = ray.get(t.train_loss.remote(data))
        ray.get(t.train.remote(data, round=0))
        after = ray.get(t.train_loss.remote(data))
        assert after < before - 0.2
        items = [{"question": d["question"], "answer": d["target"]} for d in data]
        ray.get(scorer.actors[0].load_adapter.remote(ray.get(t.adapter_state.remote())))
        score = scorer.actors[0].score
        got = np.mean([r["loss_gt"] for r in ray.get(score.remote(items, needs=["loss_gt"]))])
        assert got == pytest.approx(after, abs=1e-4)
        ray.get(scorer.actors[0].load_adapter.remote(None))  # back to the base weights
        got = np.mean([r["loss_gt"] for r in ray.get(score.remote(items, needs=["loss_gt"]))])
        assert got == pytest.approx(before, abs=1e-4)
    finally:
        trainer.shutdown()
        scorer.shutdown()
