"""taskloc: do task-relevant changes concentrate in small regions of a model? Measure it."""
__version__ = "0.1.0"
