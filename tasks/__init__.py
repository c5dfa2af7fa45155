"""ce-bench's lm-eval tasks: YAML configs and the small helpers they name with `!function`.

Installed as the package `ce_bench.tasks`, so helpers are referenced as
`!function ce_bench.tasks.<module>.<name>` in editable and wheel installs alike.
"""
