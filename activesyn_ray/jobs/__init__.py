"""Entrypoints for `ray job submit --working-dir . -- python -m activesyn_ray.jobs.<name> ...`."""
