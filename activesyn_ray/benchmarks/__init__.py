"""`activesyn bench`'s parts, shipped with the package so the command works from an install:
`teacher.py` and `student.py` run as `python -m activesyn_ray.benchmarks.<part>`; `loop.yaml` is the
job of the loop-overhead run (the tiny-student loop of jobs/tiny-cpu.yaml, procedural teacher)."""
