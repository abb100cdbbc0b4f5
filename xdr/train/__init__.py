"""Dual-encoder training: data, batch samplers, losses, the training loop (no Ray)."""
