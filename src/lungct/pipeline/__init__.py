"""Pipeline: the runs that tie the wings together (train + evaluate, cross-validation, the main job)."""

from lungct.pipeline.training import run_training

__all__ = ["run_training"]
