"""Small pre-registered studies that choose a setting of a grid before it runs, on the validation
split only (`python -m activesyn_ray.studies.<name> --help`); each writes its numbers as JSON and
prints the choice its rule makes. The rule is in the study's docstring and in the plan of the
grid it serves."""
