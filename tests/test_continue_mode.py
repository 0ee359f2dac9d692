"""student.restart_each_round: false -- each round continues from the previous round's adapter and
AdamW state on its new samples + a replay share of older ones -- exact across faults:

  * which samples a round trains on (pure functions);
  * a trainer group that loads the state a round ended in takes exactly the steps of the group that
    kept it in memory (2 DeepSpeed ranks, ZeRO-2, LoRA dropout on), and starting from the base
    instead would not;
  * whole runs (the harness of tests/test_reliability_loop.py, 2 rounds): a trainer rank killed
    mid-training of round 2 (the group restarts and loads round 1's state from the driver's pool),
    then the driver killed while the restarted group trains round 2 again (`activesyn resume` loads
    round 1's state from checkpoints/round-1/trainer/) end with the same adapter and trainer state
    of every round, the same metrics, samples, scores and ledger as the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from activesyn_ray import runstore
from activesyn_ray.student import trainer_state
from activesyn_ray.student.replay import replay_count, round_training_set

# 2 rounds of 4 (the harness's budget); micro batch 1 and 4 epochs so a round's training lasts
# long enough to be caught by two kills (no engine build in a continued round)
CONTINUE = ["student.restart_each_round=false", "student.replay=0.5",
            "student.epochs=4", "student.micro_batch_size=1"]


# ------------------------------------------------------------------------------ pure functions
def test_replay_share_cap_and_determinism():
    assert replay_count(4, 100, 0.5) == 4 and replay_count(4, 100, 0.2) == 1
    assert replay_count(30, 100, 0.25) == 10 and replay_count(4, 2, 0.5) == 2  # capped by what exists
    assert replay_count(4, 100, 0.0) == 0 and replay_count(0, 100, 0.5) == 0
    new, old = list("abcd"), [f"o{i}" for i in range(20)]
    data, n = round_training_set(new, old, replay=0.5, seed=3, round=2)
    assert n == 4 and data[:4] == new and set(data[4:]) <= set(old) and len(set(data[4:])) == 4
    assert round_training_set(new, old, replay=0.5, seed=3, round=2) == (data, n)  # redo: same draw
    others = {tuple(round_training_set(new, old, replay=0.5, seed=s, round=r)[0][4:])
              for s, r in [(3, 3), (4, 2), (5, 7)]}
    assert tuple(data[4:]) not in others  # another round or seed draws other samples
    assert data[4:] == sorted(data[4:], key=old.index)  # kept in their original order
    assert round_training_set(new, old, replay=0.0, seed=3, round=2) == (new, 0)


# ------------------------------------------------------------------------------ trainer ranks
@pytest.mark.slow
def test_a_group_that_loads_the_state_takes_the_same_steps(ray_session, tmp_path):
    from test_student import make_cfg

    from activesyn_ray.actors import ActorGroup
    from activesyn_ray.student.trainer import TrainerWorker
    from activesyn_ray.tasks import build_task

    ray = ray_session
    cfg = make_cfg(ranks=2, micro=4, epochs=2, restart_each_round=False,
                   lora={"r": 8, "alpha": 16, "dropout": 0.1})
    task = build_task(cfg.task, seed=0)
    seeds, _ = task.splits()
    data = [{"question": e.question, "target": task.target(e)} for e in seeds]
    r1, r2 = data[:16], data[16:32]

    def group(name):
        g = ActorGroup(TrainerWorker, name=name, resources=cfg.resources.trainer,
                       init_kwargs=dict(cfg=cfg))
        addr, port = ray.get(g.actors[0].get_master_addr_port.remote())
        ray.get(g.call("init_distributed", master_addr=addr, master_port=port))
        return g

    kept = group("trainer-kept")
    try:
        ray.get(kept.call("train", r1, round=1, token="a"))
        after1 = ray.get(kept.call("trainer_state"))
        m_kept = ray.get(kept.call("train", r2, round=2, start={"token": "a", "state": [None]},
                                   token="b"))[0]  # holds "a": continues in memory, never reads the ref
        kept_state = ray.get(kept.call("trainer_state"))
    finally:
        kept.shutdown()
    assert all(torch.equal(after1[0][0][k], after1[1][0][k]) for k in after1[0][0])  # ranks agree
    tensors, meta = after1[0]
    assert meta["step"] == "4.0" and any(k.endswith("::exp_avg_sq") for k in tensors)
    # through the checkpoint file, as a resumed run reads it
    path = tmp_path / trainer_state.FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(trainer_state.to_bytes(after1[0]))
    start = {"token": "a", "state": [ray.put(trainer_state.load(path))]}

    fresh = group("trainer-restarted")
    try:
        m_loaded = ray.get(fresh.call("train", r2, round=2, start=start, token="b"))[0]
        loaded_state = ray.get(fresh.call("trainer_state"))
        m_base = ray.get(fresh.call("train", r2, round=2, start=None, token="c"))[0]
    finally:
        fresh.shutdown()
    assert m_loaded["loss_first_epoch"] == m_kept["loss_first_epoch"]
    assert m_loaded["loss_last_epoch"] == m_kept["loss_last_epoch"]
    for k, v in kept_state[0][0].items():
        assert torch.equal(v, loaded_state[0][0][k]), k
    assert kept_state[0][1] == loaded_state[0][1]  # step counts
    assert abs(m_base["loss_first_epoch"] - m_kept["loss_first_epoch"]) > 1e-3  # base != continued
    print(f"\nround 2 first-epoch loss: kept in memory {m_kept['loss_first_epoch']:.6f}, loaded "
          f"{m_loaded['loss_first_epoch']:.6f}, from the base instead {m_base['loss_first_epoch']:.6f}")


# ------------------------------------------------------------------------------ whole runs
def checkpoint_tensors(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    """Every round's (and the final) adapter and trainer state, file by file."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run_dir / "checkpoints").rglob("*.safetensors")):
        out[str(f.relative_to(run_dir))] = load_file(f)
    return out


@pytest.fixture(scope="module")
def reference_continue(tmp_path_factory, ray_session) -> dict:
    from test_reliability_loop import final_state, run_in_process

    run_dir = tmp_path_factory.mktemp("reference-continue") / "run"
    t0 = time.time()
    run_in_process(run_dir, *CONTINUE)  # in-process: the killed twin below goes through the CLI
    state = final_state(run_dir)
    print(f"\ncontinue-mode reference run: {time.time() - t0:.0f} s, train sizes "
          f"{[m['train_size'] for m in state['metrics']]}")
    return dict(state, run_dir=run_dir, checkpoints=checkpoint_tensors(run_dir))


@pytest.mark.slow
def test_continue_mode_trains_new_samples_plus_replay(reference_continue):
    metrics = runstore.RunStore(reference_continue["run_dir"]).read(runstore.METRICS)
    # round 1: 4 new; round 2: 4 new + 4 older (replay 0.5 = half the round's set)
    assert [m["train_size"] for m in metrics] == [0, 4, 8]
    assert [m["train_replayed"] for m in metrics] == [0, 0, 4]
    ckpt = reference_continue["checkpoints"]
    assert "checkpoints/round-2/trainer/state.safetensors" in ckpt
    assert "checkpoints/round-0/trainer/state.safetensors" not in ckpt  # untrained: nothing to carry
    # the adapter moved between rounds, and the AdamW moments came along
    a1 = ckpt["checkpoints/round-1/adapter_model.safetensors"]
    a2 = ckpt["checkpoints/round-2/adapter_model.safetensors"]
    assert any(not torch.equal(a1[k], a2[k]) for k in a1)
    assert any(k.endswith("::exp_avg") for k in ckpt["checkpoints/round-2/trainer/state.safetensors"])


@pytest.mark.slow
def test_continue_mode_kills_end_with_the_same_adapter(reference_continue, tmp_path):
    """A trainer rank killed mid-training of round 2 (the group restarts, loads round 1's state and
    trains round 2 again), then the driver killed while it does and the run resumed: the same
    adapters, trainer states, metrics and samples as the reference."""
    from test_reliability_loop import Cli, assert_same_final_state, run_args

    run_dir = tmp_path / "killed"
    metrics_path = run_dir / runstore.METRICS
    first = Cli(*run_args(run_dir, *CONTINUE))
    rank = first.wait_for(lambda: len(list(runstore.read_jsonl(metrics_path))) >= 2
                          and first.busy("TrainerWorker.train"), "round 2's training")
    old = {rank}  # both ranks of the first group, so the restarted one is told apart
    while pid := first.busy("TrainerWorker.train", exclude=old):
        old.add(pid)
    os.kill(rank, signal.SIGKILL)  # one of the two DeepSpeed ranks
    first.wait_for(lambda: "restarting the whole group" in first.out, "the trainer group's restart")
    # the restarted group (new processes) trains round 2 again, from round 1's state
    first.wait_for(lambda: first.busy("TrainerWorker.train", exclude=old), "the new group training")
    first.kill()  # the driver and its local Ray
    state = runstore.RunStore(run_dir).load_state()
    assert state["iteration"] == 2 and state["phase"] in ("generated", "scored")
    assert not state.get("done")
    Cli("resume", str(run_dir)).finish()

    got_state = assert_same_final_state(run_dir, reference_continue, n_samples=8)
    print(f"\nkilled run: {first.out.count('restarting the whole group')} trainer restart(s), "
          f"driver killed in round 2 ({state['phase']}), resumed; train losses "
          f"{[m['train_loss_first'] for m in got_state['metrics']]}")
    got = checkpoint_tensors(run_dir)
    assert sorted(got) == sorted(reference_continue["checkpoints"])
    for name, tensors in reference_continue["checkpoints"].items():
        for k, v in tensors.items():
            assert torch.equal(v, got[name][k]), f"{name}: {k}"
