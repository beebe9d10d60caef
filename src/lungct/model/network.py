"""The network lungct trains and serves: per-model normalisation + a registry backbone.

Inputs are one-channel slices in [0, 1], shape (N, 1, S, S); outputs are logits (N, 3).
Normalisation lives inside the network so every caller (training, CLI, web, Grad-CAM) feeds the
same [0, 1] images.
"""

from __future__ import annotations

import torch
from torch import nn

from lungct import CLASSES
from lungct.model.registry import ModelSpec, PretrainedInfo, create_model, get_spec, resolve_layer


class Classifier(nn.Module):
    """``backbone((x - mean) / std)`` for x in [0, 1], (N, 1, S, S) -> logits (N, n_classes)."""

    def __init__(self, backbone: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


BN_MOMENTUM = 0.1
"""Batch-norm running-stat momentum for fine-tuning. Some backbones ship TensorFlow's 0.01, which on a
small dataset (tens of steps per epoch) leaves the running statistics far behind the weights, so
evaluation-mode outputs are wrong for many epochs."""


def build_network(name: str, pretrained: str = "auto") -> tuple[Classifier, ModelSpec, PretrainedInfo]:
    """Build the registry model ``name`` wrapped with its normalisation."""
    spec = get_spec(name)
    backbone, info = create_model(name, pretrained=pretrained, num_classes=len(CLASSES))
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = BN_MOMENTUM
    return Classifier(backbone, spec.mean, spec.std), spec, info


def cam_layer(net: Classifier, spec: ModelSpec) -> nn.Module:
    """The Grad-CAM target layer of a built network (from the spec's dotted path)."""
    return resolve_layer(net.backbone, spec.cam_layer)
