"""Activations: what a model's hook sites hold, and how sparse it is."""
