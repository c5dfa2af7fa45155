"""Model loading: the embedded default model and the `edited_hf` lm-eval model."""
