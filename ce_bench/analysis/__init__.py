"""Analyses of located edits beyond the benchmark scores (Unified Concept Editing sections 4.4 and
4.5)."""

from ce_bench.analysis.generalization import (
    GeneralizationReport,
    generalization_markdown,
    generalization_table,
    output_generalization,
)
from ce_bench.analysis.overlap import (
    OverlapReport,
    neuron_overlap,
    overlap_markdown,
    overlap_table,
)

__all__ = [
    "GeneralizationReport",
    "OverlapReport",
    "generalization_markdown",
    "generalization_table",
    "neuron_overlap",
    "output_generalization",
    "overlap_markdown",
    "overlap_table",
]
