"""Analyses of located edits beyond the benchmark scores (Unified Concept Editing sections 4.4 and
4.5)."""

from ce_bench.analysis.generalization import (
    GeneralizationReport,
    generalization_grid,
    output_generalization,
)
from ce_bench.analysis.overlap import OverlapReport, neuron_overlap, overlap_grid

__all__ = [
    "GeneralizationReport",
    "OverlapReport",
    "generalization_grid",
    "neuron_overlap",
    "output_generalization",
    "overlap_grid",
]
