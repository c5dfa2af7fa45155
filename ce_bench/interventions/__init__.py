"""Intervention kinds, registered by name; `build_intervention` turns an artifact into one."""

from ce_bench.interventions import neurons, ranges, sae, steering, weights  # noqa: F401  (registers)
from ce_bench.interventions.base import (
    INTERVENTIONS,
    Intervention,
    Switch,
    build_intervention,
    track_cache_offset,
)

__all__ = ["INTERVENTIONS", "Intervention", "Switch", "build_intervention", "track_cache_offset"]
