"""Intervention kinds, registered by name; `build_intervention` turns an artifact into one."""

from ce_bench.interventions import (  # noqa: F401  (registers)
    featureedit,
    neurons,
    ranges,
    sae,
    steering,
    weights,
)
from ce_bench.interventions.base import (
    INTERVENTIONS,
    Intervention,
    Switch,
    build_intervention,
    save_intervention,
    track_cache_offset,
)
from ce_bench.interventions.intervention_set import InterventionSet

__all__ = [
    "INTERVENTIONS",
    "Intervention",
    "InterventionSet",
    "Switch",
    "build_intervention",
    "save_intervention",
    "track_cache_offset",
]
