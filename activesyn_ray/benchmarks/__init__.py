"""`activesyn bench`'s parts, shipped with the package so the command works from an install:
`teacher.py` and `student.py` run as `python -m activesyn_ray.benchmarks.<part>`; `loop.yaml` is the
job of the loop-overhead run (the quickstart loop: tiny student, procedural teacher)."""
