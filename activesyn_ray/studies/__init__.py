"""One-off studies of experiments and their settings, each `python -m activesyn_ray.studies.<name>`
(its docstring gives the command; docs/results.md the commands behind its tables), each writing
its numbers as JSON. Those that choose a setting of a grid before it runs (round1_shots,
learnability_settings, pilot_levels, pool_pilot) never read the test split and state their rule
in their docstring and in the plan of the grid they serve; those that read experiments
(protocol_compare, inheritance) take their paired differences, bootstrap intervals and rank
correlations from activesyn_ray.report, as the report does. Throughput and cost measurements are
in activesyn_ray.benchmarks."""
