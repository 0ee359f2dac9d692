"""`activesyn bench`'s parts, shipped with the package so the command works from an install:
`teacher.py` and `student.py` run as `python -m activesyn_ray.benchmarks.<part>`; `loop.yaml` is the
job of the loop-overhead run (the tiny-student loop of jobs/tiny-cpu.yaml, procedural teacher)."""


def write_result(out, result) -> None:
    """Each part's `--out FILE`: the result as JSON, written atomically (a killed bench leaves the
    previous file whole), and one line saying where."""
    if not out:
        return
    from activesyn_ray.atomic_files import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}", flush=True)
