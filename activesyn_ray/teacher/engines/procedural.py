"""The procedural teacher: a STAND-IN for a strong LLM teacher, for CPU experiments.

A 135M model cannot write correct new math problems, so for reasoning-gym tasks this engine writes
a new instance like the seed (`task.generate_like(seed, seed=..., like=...)`, the draw's seed
derived from the run seed and the request id): with `teacher.procedural.like: seed` the seed's own
structure with fresh values (tasks/expression.py), with `level` any instance of the seed's
generator and difficulty. Exact answers either way.
Records it produces carry engine "procedural".

Token accounting is what an LLM teacher would have been charged: the prompt is the rendered generate
prompt as teacher.model's tokenizer counts it (chat template included), the completion is the sample
written in the same `Question: ... Answer: ... #### X` format an LLM is asked for. So budget curves
in teacher tokens are comparable across engines.

Judging: the student's answer is checked exactly (`task.check_completion`) and written as
`Grade: 10` (right) or `Grade: 1` (wrong); tokens are counted the same way.
"""

from __future__ import annotations

from activesyn_ray.tasks.base import Example
from activesyn_ray.teacher.engines.base import (Completion, Engine, TeacherError, TeacherRequest,
                                                count_text_tokens, load_tokenizer, prompt_ids,
                                                register)


def format_sample(ex: Example) -> str:
    """The text an LLM teacher is asked to write (see prompts/generate.txt)."""
    body = f"{ex.solution.strip()}\n" if ex.solution else ""
    return f"Question: {ex.question.strip()}\nAnswer: {body}#### {ex.answer}"


@register("procedural")
class ProceduralEngine(Engine):
    def __init__(self, *, cfg, task=None, num_cpus: float = 1, rank: int = 0):
        if task is None or not getattr(task, "has_generator", False):
            raise TeacherError("teacher.engine=procedural needs a task with a generator (task.kind: gym)")
        self.task = task
        self.like = cfg.teacher.procedural.like
        self.tok = load_tokenizer(cfg.teacher.model)

    cache_by_default = False  # a draw from a generator costs nothing; teacher.cache.enabled: true caches it
    cache_reads_example = True  # the sample is drawn from the seed example, not from the prompt
    libraries = ("reasoning-gym",)

    @classmethod
    def cache_identity(cls, cfg) -> dict:
        """The task's generators (its config), the sample's likeness to the seed, the tokenizer
        that counts the tokens charged, and the project's version (its generators' code)."""
        from activesyn_ray.models import resolve_model
        from activesyn_ray.teacher.fingerprint import library_versions, model_fingerprint

        return {"engine": cls.name, "task": cfg.task.model_dump(mode="json"),
                "like": cfg.teacher.procedural.like,
                "tokenizer": model_fingerprint(resolve_model(cfg.teacher.model)),
                "libraries": library_versions(cls.libraries + ("activesyn-ray",))}

    @classmethod
    def seed_matters(cls, temperature: float) -> bool:
        return True  # the generator draws with the request's seed at any temperature

    @classmethod
    def label(cls, cfg) -> str:
        return (f"reasoning-gym generator (stand-in teacher; tokens counted with the "
                f"{cfg.teacher.model} tokenizer)")

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seed=None):
        raise TeacherError("the procedural engine answers structured requests (complete()), "
                           "not free-form prompts")

    def count_tokens(self, text: str) -> int:
        return count_text_tokens(self.tok, text)

    def complete(self, requests: list[TeacherRequest], *, top_p: float) -> list[Completion]:
        out = []
        for r in requests:
            ex = Example.from_dict(r.example)
            if r.kind == "generate":
                new = self.task.generate_like(ex, seed=r.seed, like=self.like)
                text, structured = format_sample(new), new.to_dict()
            else:
                ok = self.task.check_completion(ex, r.student_answer or "")
                text, structured = f"Grade: {10 if ok else 1}", None
            ids = self.tok(text, add_special_tokens=False).input_ids
            if len(ids) > r.max_new_tokens:
                # an LLM would have been cut off here: same truncated text, same charge, no sample
                ids = ids[: r.max_new_tokens]
                text, structured = self.tok.decode(ids), None
            out.append(Completion(text=text, prompt_tokens=len(prompt_ids(self.tok, r.prompt)),
                                  completion_tokens=len(ids), example=structured))
        return out
