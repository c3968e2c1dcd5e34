"""Evaluation scripts (not on the runtime path): rate-distortion, timing, privacy."""
