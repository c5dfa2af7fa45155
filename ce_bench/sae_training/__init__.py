"""Train a residual-stream Top-k SAE offline with sae-lens's own trainer.

SAE clamping (Unified Concept Editing) needs an SAE at the edited layer, and the embedded
SmolLM2-135M has no public one. This module trains one on text that exists offline: the project's
own text (emotion scenarios, `examples/`, the shipped task data) plus continuations the model
samples from short prompts, so the SAE also sees the model's own output distribution.

How, and why:
- The text is small (tens of thousands of tokens), so training repeats it. Its activations are
  computed once, through `ce_bench.sites` hooks (exactly what `sae_clamp` will edit), and
  sae-lens's `LanguageModelSAETrainingRunner` trains from that cache (`use_cached_activations`)
  instead of re-running the model on every repeat.
- Text is packed the way sae-lens packs it: contexts that start with BOS, documents separated by
  BOS. BOS and other special tokens are left out, and so are attention-sink activations (a norm
  about 100x the median, which SmolLM2 sometimes also puts on the token right after BOS): one
  of them outweighs tens of thousands of ordinary tokens in the squared error.
- Activations are scaled to mean norm sqrt(d_in) while training; sae-lens folds that factor back
  into the weights, so the saved SAE has `normalize_activations == "none"` and reads and writes
  activations in the model's own scale (which `sae_clamp`'s delta fast path relies on).
- On CPUs that multiply bf16 natively, sampling, caching and SAE steps run under bf16 autocast
  (about 1.7x faster, same held-out explained variance); the evaluation runs in float32.

Results are cached under `$CE_BENCH_HOME/saes/<model>/layer<L>-<hash>/` (hash of the settings
and the project text), written aside and renamed when complete, with `training_report.json`
(held-out explained variance, mean L0, dead-feature share, tokens, times, settings).

Example:
    >>> path = ensure_sae(20)                     # the cached SAE, or trained now (minutes)
    >>> params = {"feature": 123, "strength": 8.0, "mode": "delta", "sae_path": str(path)}
    >>> load_report(path)["explained_variance"]
"""

from ce_bench.sae_training.train import (
    SAESettings,
    ensure_sae,
    evaluate_sae,
    load_report,
    sae_dir,
    train_sae,
)

__all__ = ["SAESettings", "ensure_sae", "evaluate_sae", "load_report", "sae_dir", "train_sae"]
