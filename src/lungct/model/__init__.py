"""Model wing: the registry of typed model specs, network construction, the training step, the decision
rule and the Predictor."""

from lungct.model.decision import DecisionRule
from lungct.model.network import build_network
from lungct.model.predictor import Prediction, Predictor
from lungct.model.registry import REGISTRY, ModelSpec, create_model, get_spec

__all__ = [
    "REGISTRY",
    "DecisionRule",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "build_network",
    "create_model",
    "get_spec",
]
