"""Episodic training loop, evaluation (mean ± 95% CI) and atomic checkpoints."""
