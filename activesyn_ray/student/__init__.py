"""The student: DeepSpeed + PEFT LoRA trainer ranks (trainer.py), scorer shards (scoring.py), and
the pool that drives both (pool.py: StudentPool). Nothing is imported here: the driver and the
coordinator reach this package for torch-free helpers (replay.py); the actor modules import torch.
"""
