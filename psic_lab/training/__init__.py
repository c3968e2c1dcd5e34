"""Training (not on the runtime path): ``psic train`` / ``python -m psic_lab.training``."""
