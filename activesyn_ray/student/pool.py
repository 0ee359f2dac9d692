"""StudentPool: the one student object the coordinator uses (trainer ranks + scorer shards).

    pool = StudentPool(cfg=cfg, task=task)
    cols = pool.score(seeds, {"loss", "grad_embed"})   # base model before the first train call
    pool.train(synthetic_so_far, round=t)             # DeepSpeed ranks; then the adapter -> scorers
    acc = pool.evaluate(test)["accuracy"]
    pool.shutdown()

After training, rank 0's adapter state is fetched, `ray.put` ONCE, and every scorer loads it from
the object store: only the LoRA weights (KB-MB) move between actors, never the base weights.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray

from activesyn_ray import placement
from activesyn_ray.actors import ActorGroup, shard
from activesyn_ray.selection.learnability import shot_indices
from activesyn_ray.student import adapter_sync, trainer_state
from activesyn_ray.student.scoring import DECODED, ScorerWorker
from activesyn_ray.student.trainer import TrainerWorker
from activesyn_ray.tasks.base import Example


def state_bytes(state: dict | bytes) -> int:
    """The tensor bytes of what the scorers are sent: a state dict, or an adapter file's bytes."""
    if isinstance(state, bytes):
        return adapter_sync.payload_bytes(state)
    return int(sum(t.numel() * t.element_size() for t in state.values()))


log = logging.getLogger(__name__)


class PendingScores:
    """Scorer calls in flight (StudentPool.score_submit). settle() waits for them; a shard that
    died meanwhile is restarted and the call redone (under the same adapter: settle() comes before
    the next push). result() returns the columns."""

    def __init__(self, refs: list, assemble, redo):
        self.refs, self._assemble, self._redo = refs, assemble, redo
        self._rows: list[dict] | None = None

    def settle(self) -> None:
        if self._rows is None:
            try:
                self._rows = [r for part in ray.get(self.refs) for r in part]
            except ray.exceptions.RayActorError as err:
                log.warning("a scorer died while scoring in the background (%s); redoing it",
                            type(err).__name__)
                self._rows = self._redo()

    def result(self) -> dict[str, np.ndarray | list]:
        self.settle()
        return self._assemble(self._rows)


def lora_state(folder) -> dict:
    """The LoRA weights of a saved adapter folder (checkpoints/round-t/), fp32, as the trainer's
    get_peft_model_state_dict gave them: what a scorer's load_adapter takes."""
    from pathlib import Path

    return {k: v for f in sorted(Path(folder).glob("*.safetensors"))
            for k, v in adapter_sync.tensors(f.read_bytes()).items()}


class StudentPool:
    def __init__(self, *, cfg, task, score_batch_size: int = 16, wait: bool = True):
        """wait=False: the actors are created and start in the background; `wait_ready()` joins
        them (pools.start_pools starts the teacher meanwhile)."""
        self.cfg, self.task = cfg, task
        res = cfg.resources
        # colocate_scorers: trainer rank i and scorer i share bundle i (and its GPU). Separate
        # fractional-GPU groups would let Ray pack two trainer ranks onto ONE GPU (NCCL refuses).
        self.shared_pg = placement.reserve_shared(
            "student", [res.trainer, res.scorers], strategy=res.trainer.placement_strategy,
            timeout_s=res.placement_timeout_s) if res.colocate_scorers else None
        # A rank that dies or hangs (student.call_timeout_s) is restarted and the phase redone:
        # the trainer as a whole (DeepSpeed ranks are one collective), a scorer alone.
        retry = dict(call_timeout_s=cfg.student.call_timeout_s,
                     max_restarts=cfg.student.max_restarts,
                     settings_hint="student.max_restarts, student.call_timeout_s")
        self.trainers = ActorGroup(TrainerWorker, name="trainer", resources=res.trainer,
                                   init_kwargs=dict(cfg=cfg), placement_group=self.shared_pg,
                                   placement_timeout_s=res.placement_timeout_s,
                                   collective=True, setup=self._rendezvous, **retry)
        # the scorer shards are created before the trainer's rendezvous is waited for: their
        # engines (model load, vLLM start) come up while the DeepSpeed ranks start, not after
        self.scorers = ActorGroup(ScorerWorker, name="scorers", resources=res.scorers,
                                  init_kwargs=dict(cfg=cfg, batch_size=score_batch_size),
                                  placement_group=self.shared_pg,
                                  placement_timeout_s=res.placement_timeout_s,
                                  setup=self._reload_adapter, **retry)
        self._adapter_files: dict | None = None  # the last trained adapter's folder, as bytes
        self.adapter_ref: ray.ObjectRef | None = None
        self.adapter_bytes = 0
        # restart_each_round: false: the state the last training ended in (weights + AdamW), as
        # {"token", "state": [ObjectRef]} (a list, so Ray hands the ranks the ref, not the tensors:
        # only a rank that does not hold that state fetches it). None: a fresh adapter.
        self.continues = not cfg.student.restart_each_round
        self._train_from: dict | None = None
        self._trainings = 0
        if wait:  # last: a restart during the wait runs setup hooks that read the fields above
            self.wait_ready()

    def wait_ready(self) -> None:
        """The trainer ranks' rendezvous (restarting a rank that fails it), then every scorer
        shard's engine up."""
        self.trainers.set_up()
        self.scorers.gather("paths")

    # ------------------------------------------------------------------ restarts
    def _rendezvous(self, ranks: list[int]) -> None:
        """OpenRLHF-style: rank 0 names the address, every rank joins the process group (after a
        restart all ranks are new, so this is the group's set-up again)."""
        addr, port = self.trainers.gather("get_master_addr_port", ranks=[0])[0]
        self.trainers.gather("init_distributed", master_addr=addr, master_port=port)

    def _reload_adapter(self, ranks: list[int]) -> None:
        """A restarted scorer starts from the base: give it the current adapter."""
        self.scorers.gather("load_adapter", self.adapter_ref, ranks=ranks)

    # ------------------------------------------------------------------ training
    def _on_all_ranks_if_zero3(self, method: str, *args, **kwargs):
        """ZeRO-3 shards the weights, so every rank takes part in gathering them; otherwise rank 0
        has everything and the other ranks stay idle."""
        ranks = None if self.cfg.student.zero_stage == 3 else [0]
        return self.trainers.gather(method, *args, ranks=ranks, **kwargs)[0]

    def train(self, examples: list[Example], round: int,
              settle_first: PendingScores | None = None) -> dict:
        """Train on `examples` (the round's training set: all synthetic data so far, or with
        restart_each_round: false the new samples + replay) and push the new adapter to the
        scorers. Training and fetching its result are one phase: a trainer restart loses the
        trained weights, so a failure anywhere in it redoes the training (deterministic given the
        data and, when continuing, the state the previous round ended in, which restarted ranks
        load). settle_first: scorer calls still running under the previous adapter (score_submit);
        the new one is pushed only after they end (scorer actors are threaded: no queue order to
        rely on)."""
        data = [{"question": e.question, "target": self.task.target(e)} for e in examples]
        data_ref = ray.put(data)  # one copy in the object store, read by every rank
        start, token = self._train_from, f"{round}.{self._trainings}"

        def phase():
            metrics = self.trainers.gather("train", data_ref, round=round, start=start,
                                           token=token)[0]
            t0 = time.perf_counter()
            files = self._on_all_ranks_if_zero3("adapter_files")
            # LoRA: the scorers load the checkpoint's adapter file (student/adapter_sync.py)
            state = files[adapter_sync.ADAPTER_FILE] if self.cfg.student.lora is not None else \
                self._on_all_ranks_if_zero3("adapter_state")
            # a collective (DeepSpeed all-reduces each tensor's fragments): every rank
            tstate = self.trainers.gather("trainer_state")[0] if self.continues else None
            return metrics, state, files, tstate, t0

        metrics, state, files, tstate, t0 = self.trainers.retry(phase)
        self._trainings += 1
        if tstate is not None:
            self._train_from = {"token": token, "state": [ray.put(tstate)]}
            files = {**files, trainer_state.FILE: trainer_state.to_bytes(tstate)}
        self._adapter_files = files
        if settle_first is not None:
            settle_first.settle()
        self.push_adapter(state)
        metrics.update(samples_per_s=metrics["samples"] / max(metrics["loop_seconds"], 1e-9),
                       adapter_bytes=self.adapter_bytes, sync_seconds=time.perf_counter() - t0)
        return metrics

    def push_adapter(self, state: dict | bytes | None) -> None:
        """Load `state` into every scorer: a LoRA adapter file's bytes (adapter_sync), a full
        model's state dict, or None = the base model; also the way to restore a checkpointed
        adapter on resume."""
        if state is None:
            self.adapter_ref, self.adapter_bytes = None, 0
            self.scorers.run("load_adapter", None)
            return
        self.adapter_bytes = state_bytes(state)
        self.adapter_ref = ray.put(state)  # the ONE put: every scorer reads this same object
        self.scorers.run("load_adapter", self.adapter_ref)

    def restore_adapter(self, folder) -> bool:
        """Resume: push the adapter checkpointed in `folder` (a save_adapter folder) to the
        scorers, and keep its files for the next save, so a resumed run scores and saves with the
        student it had, not the base. With restart_each_round: false the next training continues
        from the trainer state saved beside it (a folder without one, the untrained round 0:
        from a fresh adapter). False when there is no such checkpoint."""
        from pathlib import Path

        folder = Path(folder)
        if not any(folder.glob("*.safetensors")):
            return False
        self._adapter_files = {f.relative_to(folder).as_posix(): f.read_bytes()
                               for f in sorted(folder.rglob("*")) if f.is_file()}
        if self.cfg.student.lora is not None:  # the PEFT file, as a training pushes it
            state = self._adapter_files[adapter_sync.ADAPTER_FILE]
        else:  # a full model folder: load it, so tied weights save_pretrained left out come back
            import torch
            from transformers import AutoModelForCausalLM

            state = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
        if self.continues:
            saved = folder / trainer_state.FILE
            self._train_from = {"token": f"restored:{folder.name}",
                                "state": [ray.put(trainer_state.load(saved))]} \
                if saved.exists() else None
            if not saved.exists() and folder.name != "round-0":
                log.warning("%s has no trainer state: the next round starts from a fresh adapter",
                            folder)
        self.push_adapter(state)
        return True

    def adapter_state(self) -> dict | None:
        """The adapter last pushed to the scorers, as tensors (None before the first training)."""
        state = None if self.adapter_ref is None else ray.get(self.adapter_ref)
        return adapter_sync.tensors(state) if isinstance(state, bytes) else state

    def train_loss(self, examples: list[Example]) -> float:
        data = [{"question": e.question, "target": self.task.target(e)} for e in examples]
        return self.trainers.run("train_loss", data)[0]

    def save_adapter(self, path: str) -> str:
        """PEFT folder loadable with `PeftModel.from_pretrained(base, path)`, written HERE (the
        caller's node: the coordinator's, where the run directory lives), atomically: the files come
        from rank 0 as bytes (kept from the last training: a trainer restarted since then no longer
        holds it), go to a temp folder, and the folder is renamed into place."""
        import os
        import shutil
        from pathlib import Path

        # Not trained in this pool yet: every rank builds its engine (a DeepSpeed collective; rank
        # 0 alone would wait for the others forever), rank 0 returns the files.
        files = self._adapter_files if self._adapter_files is not None else \
            self.trainers.run("adapter_files")[0]
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():  # names may hold a folder (trainer/state.safetensors)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return str(dest)

    # ------------------------------------------------------------------ scoring / evaluation
    def score(self, seeds: list[Example], needs: set[str]) -> dict[str, np.ndarray | list]:
        """The columns `needs` asks for over `seeds`, in order, sharded over the scorer actors.
        Only what the needs imply is computed (student/scoring.py has the table); `answer_text`
        and `correct` come along whenever the greedy answer was decoded anyway."""
        needs, verifier = self._scorer_needs(needs)
        items = self._items(seeds, needs)
        rows = self.scorers.run_sharded("score", items, needs=sorted(needs))
        return self._columns(seeds, rows, needs, verifier)

    def evaluate(self, test: list[Example]) -> dict:
        items = [{"question": e.question} for e in test]
        return self._evaluation(test, self.scorers.run_sharded("generate", items))

    def _items(self, examples: list[Example], needs: set[str]) -> list[dict]:
        """What the scorer shards get per example. With selection.learnability.shots > 0 and
        pass_rate needed, also `shots`: the solved examples its sampled answers are prompted with,
        picked here over the WHOLE list (before sharding: the same shots whatever the shard count).
        The list is what is being scored: the seed pool, or a round's teacher samples (their
        pass_rate feeds only the report's seed-vs-sample correlation) -- never test or
        validation, which go through evaluate's greedy path alone."""
        items = [{"question": e.question, "answer": self.task.target(e)} for e in examples]
        k = self.cfg.selection.learnability.shots
        if k and "pass_rate" in needs:
            for item, picks in zip(items, shot_indices(examples, k, seed=self.cfg.seed)):
                item["shots"] = [{"question": examples[j].question,
                                  "target": self.task.target(examples[j])} for j in picks]
        return items

    # ------------------------------------------------------------------ fused / overlapped calls
    def _scorer_needs(self, needs) -> tuple[set[str], bool]:
        """`needs` as the scorer shards compute them: reward_model `verifier` is the task's checker
        on the greedy answer, i.e. the `correct` column (no reward model)."""
        if "reward" in needs and not self.cfg.selection.reward_model:
            raise ValueError("selection.reward_model: a reward model is required to score "
                             "'reward' (a model folder, `verifier`, or tiny-reward for tests)")
        verifier = "reward" in needs and self.cfg.selection.reward_model == "verifier"
        return ((set(needs) - {"reward"}) | {"correct"} if verifier else set(needs)), verifier

    def _columns(self, seeds: list[Example], rows: list[dict], needs: set[str], verifier: bool
                 ) -> dict[str, np.ndarray | list]:
        """Scorer rows -> named columns; `answer_text` and `correct` come along whenever the
        greedy answer was decoded anyway."""
        have = set(rows[0]) if rows else set(needs) | ({"answer_text"} if needs & DECODED else set())
        cols: dict[str, np.ndarray | list] = {
            name: np.array([r[name] for r in rows], dtype=np.float64)
            for name in ("loss", "loss_gt", "entropy", "reward") if name in have}
        if "answer_text" in have:
            cols["answer_text"] = [r["answer_text"] for r in rows]
            cols["correct"] = np.array([float(self.task.check_completion(e, t))
                                        for e, t in zip(seeds, cols["answer_text"])])
        if "sampled_texts" in have:  # learnability: share of the n sampled answers judged correct
            cols["pass_rate"] = np.array([np.mean([self.task.check_completion(e, t) for t in texts])
                                          for e, texts in zip(seeds, (r["sampled_texts"]
                                                                      for r in rows))])
        if "grad_embed" in needs:
            cols["grad_embed"] = np.stack([r["grad_embed"] for r in rows]).astype(np.float64) \
                if rows else np.zeros((0, 0))
        if verifier:
            cols["reward"] = cols["correct"].copy()
        return cols

    def _evaluation(self, test: list[Example], completions: list[str]) -> dict:
        correct = [bool(self.task.check_completion(e, c)) for e, c in zip(test, completions)]
        return {"accuracy": float(np.mean(correct)) if correct else 0.0, "n": len(test),
                "correct": correct, "completions": completions}

    def evaluate_and_score(self, test: list[Example], seeds: list[Example], needs: set[str]
                           ) -> tuple[dict, dict[str, np.ndarray | list]]:
        """evaluate(test) and score(seeds, needs) under the SAME adapter in one call per scorer
        shard: shard i gets test slice i and pool slice i (the slices the two separate calls would
        give it). Returns (evaluate's dict + "shard_seconds", score's columns): the same values."""
        needs, verifier = self._scorer_needs(needs)
        n = self.scorers.world_size
        eval_parts = shard([{"question": e.question} for e in test], n)
        pool_parts = shard(self._items(seeds, needs), n)
        parts = self.scorers.retry(lambda: self.scorers.gather(  # a dead/hung shard: redone
            "evaluate_and_score", per_rank=list(zip(eval_parts, pool_parts)), needs=sorted(needs)))
        ev = self._evaluation(test, [c for p in parts for c in p["completions"]])
        ev["shard_seconds"] = [p["seconds"] for p in parts]
        return ev, self._columns(seeds, [r for p in parts for r in p["rows"]], needs, verifier)

    def score_submit(self, seeds: list[Example], needs: set[str]) -> "PendingScores":
        """score(seeds, needs) started now and collected later (`.result()` returns the columns),
        so the scorer shards work while the caller does something else, e.g. train (pass
        `settle_first=pending` to train so the new adapter waits for this call)."""
        needs, verifier = self._scorer_needs(needs)
        items = self._items(seeds, needs)
        refs = self.scorers.call_sharded("score", items, needs=sorted(needs))
        return PendingScores(refs, lambda rows: self._columns(seeds, rows, needs, verifier),
                             redo=lambda: self.scorers.run_sharded("score", items,
                                                                   needs=sorted(needs)))

    # ------------------------------------------------------------------ misc
    def peak_rss(self) -> dict:
        """Peak resident memory per actor kind: {"trainer": [bytes per rank], "scorer": [...]}."""
        return {"trainer": ray.get(self.trainers.call("peak_rss")),
                "scorer": ray.get(self.scorers.call("peak_rss"))}

    def full_weight_bytes(self) -> int:
        """What syncing the whole model instead of the adapter would move per round."""
        return ray.get(self.scorers.actors[0].weight_bytes.remote())

    def shutdown(self) -> None:
        for group in (getattr(self, "scorers", None), getattr(self, "trainers", None)):
            if group is not None:
                group.shutdown()
        placement.release(getattr(self, "shared_pg", None))
        self.shared_pg = None
