"""Training: models, data pipeline, loop, checkpoints. Needs the `train` extra (torch, smp)."""
