"""Model wing: the registry of typed model specs, network construction, the training step, the Predictor."""

from lungct.model.network import build_network
from lungct.model.predictor import Prediction, Predictor, decide
from lungct.model.registry import REGISTRY, ModelSpec, create_model, get_spec

__all__ = [
    "REGISTRY",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "build_network",
    "create_model",
    "decide",
    "get_spec",
]
