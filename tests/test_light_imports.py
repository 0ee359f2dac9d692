"""What a process imports to start, kept light where nothing is lost (every run start pays it, in
every actor). Tokenizers load without AutoTokenizer where AutoTokenizer would build the same object
(models.py `open_tokenizer`; the teacher's `load_tokenizer` and the driver's preflight use it):
every token a run is charged is counted by it, so the direct path must give AutoTokenizer's class,
ids and padding, and must really skip the import (torch) it exists to skip. An actor's thread
count (actors.set_threads) must hold whether torch is imported before or after it. A run's
coordinator imports no torch: only the actors that make tensors do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from activesyn_ray.models import loads_as_backend, resolve_model
from activesyn_ray.teacher.engines.base import count_text_tokens, load_tokenizer, prompt_ids

ROOT = Path(__file__).resolve().parents[1]
# Every kind of folder this project builds (make-teacher saves its base's tokenizer unchanged).
BUILT = ["tiny", "tiny-reward", "tiny:ctx=2048", "smollm2-135m"]
TEXTS = ["What is 2+3?", "  leading and trailing spaces  ", "Question: 17 - 9 = ?\nAnswer: 8\n#### 8",
         "ünïcödé — and emoji 🙂 and CJK 漢字", "<|im_start|>user\nhi<|im_end|>", "", "a\tb\r\nc",
         "Write a new problem like this one:\n" + "12 + 34 * 5 " * 40]


@pytest.mark.parametrize("spec", BUILT)
def test_direct_load_equals_autotokenizer(spec):
    from transformers import AutoTokenizer

    folder = resolve_model(spec)
    assert loads_as_backend(folder), f"{spec}: {folder} would go through AutoTokenizer"
    auto = AutoTokenizer.from_pretrained(str(folder))
    auto.padding_side = "left"
    if auto.pad_token is None:
        auto.pad_token = auto.eos_token
    direct = load_tokenizer(spec)
    assert type(direct) is type(auto)
    assert (direct.padding_side, direct.pad_token, direct.eos_token, direct.bos_token) == \
        (auto.padding_side, auto.pad_token, auto.eos_token, auto.bos_token)
    assert getattr(direct, "chat_template", None) == getattr(auto, "chat_template", None)
    for text in TEXTS:
        assert prompt_ids(direct, text) == prompt_ids(auto, text), (spec, text)
        assert count_text_tokens(direct, text) == count_text_tokens(auto, text), (spec, text)
    batch = direct(TEXTS[:3], padding=True).input_ids
    assert batch == auto(TEXTS[:3], padding=True).input_ids


def _fresh_process(code: str, env: dict | None = None) -> str:
    """stdout of `code` run by this Python in a new process (nothing imported before it)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT, env=env).stdout


def test_driver_and_teacher_tokenizers_do_not_import_torch():
    """What the direct path is for: the CLI driver (its preflight reads the student's tokenizer), a
    run's coordinator and a procedural teacher replica (the teacher's) never needed torch; through
    AutoTokenizer each imported it (~6 s of CPU per process here)."""
    code = ("import sys\n"
            "import activesyn_ray.driver\n"
            "from activesyn_ray.config import load_config\n"
            "from activesyn_ray.preflight import _student_tokenizer\n"
            "from activesyn_ray.teacher.engines.base import load_tokenizer\n"
            "cfg = load_config('jobs/tiny-cpu.yaml', ['student.model=tiny'])\n"
            "s, t = _student_tokenizer(cfg), load_tokenizer('tiny')\n"
            "print(type(s).__name__, type(t).__name__, 'torch' in sys.modules)")
    out = _fresh_process(code)
    assert out.split()[-3:] == ["TokenizersBackend", "TokenizersBackend", "False"], out


def test_coordinator_with_the_actor_classes_it_creates_imports_no_torch():
    """A run's coordinator creates the trainer ranks and scorer shards, so it imports the modules of
    their classes; torch is imported where tensors are made, in those actors (~3 s of CPU saved at
    every run start, before its pools start). A LoRA adapter reaches it as its checkpoint file's
    bytes (student/adapter_sync.py), sized without torch. Continue mode's trainer state and a full
    finetune's state dict do come to it as tensors (not checked here)."""
    code = ("import sys\n"
            "import activesyn_ray.coordinator, activesyn_ray.pipelined, activesyn_ray.pools\n"
            "from activesyn_ray.student.pool import StudentPool, state_bytes\n"
            "from activesyn_ray.student.scoring import ScorerWorker, resolve_inference\n"
            "from activesyn_ray.student.trainer import TrainerWorker\n"
            "from activesyn_ray.teacher.pool import TeacherPool\n"
            "from activesyn_ray.selection import STRATEGIES\n"
            "from safetensors.numpy import save\n"  # an adapter file's bytes, made without torch
            "import numpy as np\n"
            "assert state_bytes(save({'a': np.zeros((2, 3), np.float32)})) == 24\n"
            "heavy = ('torch', 'transformers', 'deepspeed', 'peft')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = _fresh_process(code)
    assert out.split("\n")[-2] == "[]", out


@pytest.mark.parametrize("change", [
    {"tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer"}},  # a class of its own
    {"config.json": {"model_type": "qwen2"}},  # a type whose hub class transformers overrides
    {"tokenizer_config.json": {"auto_map": {"AutoTokenizer": ["x.Tok", None]}}},  # custom code
])
def test_any_other_folder_goes_through_autotokenizer(change, tmp_path):
    import shutil

    folder = shutil.copytree(resolve_model("tiny"), tmp_path / "m")
    assert loads_as_backend(folder)
    for name, update in change.items():
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **update}))
    assert not loads_as_backend(folder)
    (folder / "tokenizer_config.json").unlink()
    assert not loads_as_backend(folder)  # missing: AutoTokenizer decides and explains


@pytest.mark.parametrize("torch_first", [True, False])
def test_set_threads_holds_whether_torch_comes_before_or_after(torch_first):
    """A trainer rank imports torch before set_threads; an HF teacher replica only after (its
    replica module is torch-free): either way torch runs on the actor's CPUs, not the machine's."""
    code = ("import sys\n" + ("import torch\n" if torch_first else "") +
            "from activesyn_ray.actors import set_threads\n"
            "set_threads(1.5)\n"
            "import torch\n"
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = _fresh_process(code, env)
    assert out.split()[-1] == "1", out
