"""The papers' tables, each a small module over `ce_bench.evaluation.evaluate`: concept editing
(Unified Concept Editing Table 2), class erasure (NeuronLens Tables 3-4) and lifelong knowledge
editing (MicroEdit Tables 1-2)."""
