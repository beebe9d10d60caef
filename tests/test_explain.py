"""Explanations: geometry, hook hygiene, errors, rendering, checks and the run-level report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lungct import CLASSES
from lungct.data.phantoms import make_phantom
from lungct.data.transforms import PreprocessConfig
from lungct.errors import LungctError, ModelError
from lungct.explain.cam import (
    METHODS,
    explain_batch,
    explain_image,
    heatmap_png,
    overlay,
    overlay_png,
    target_layer,
)
from lungct.explain.checks import (
    body_mask,
    faithfulness,
    phantom_set,
    pointing_game,
    shortcut_energy,
    train_phantom_model,
)
from lungct.explain.gallery import run_explain
from lungct.model.decision import DecisionRule
from lungct.model.network import build_network
from lungct.model.predictor import Predictor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """An untrained small_cnn at 32 px (explanations need no training to be well-formed)."""
    torch.manual_seed(0)
    net, _, _ = build_network("small_cnn", pretrained="none")
    return Predictor(net, "small_cnn", PreprocessConfig(size=32), temperature=1.5, rule=DecisionRule(0.3))


@pytest.fixture(scope="module")
def wide_image() -> np.ndarray:
    """A non-square (48 x 80) phantom slice, float32 in [0, 1]."""
    img, _ = make_phantom("malignant", 48, 3, width=80)
    return img.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def phantom_model() -> Predictor:
    """small_cnn trained on seeded 96 px phantoms (a few seconds on 2 cores)."""
    return train_phantom_model(size=96, n_train=45, n_val=8, epochs=10, seed=0)


def _all_hooks(net: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules()
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_heatmap_is_in_original_geometry(predictor: Predictor, wide_image: np.ndarray, method: str) -> None:
    e = explain_image(predictor, wide_image, method)
    assert e.heatmap.shape == (48, 80) and e.heatmap.dtype == np.float32
    assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0 and e.heatmap.max() > 0.0
    assert e.input_heatmap.shape == (32, 32)
    y0, y1, x0, x1 = e.prediction.geometry.crop
    outside = np.ones_like(e.heatmap, dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert (y0, y1, x0, x1) != (0, 48, 0, 80), "the phantom's empty background should be cropped away"
    assert np.all(e.heatmap[outside] == 0.0), "heatmap must be zero outside the body crop"
    assert e.method == method and e.target_class == e.prediction.class_name
    expected = predictor.predict_images([wide_image])[0].probs
    np.testing.assert_allclose(e.prediction.probs, expected, atol=1e-5)
    assert e.prediction.threshold == pytest.approx(0.3)


def test_hooks_and_gradients_are_released_over_many_calls(
    predictor: Predictor, wide_image: np.ndarray
) -> None:
    layer = target_layer(predictor)
    net = predictor.net
    assert _all_hooks(net) == 0
    for i in range(50):
        method = sorted(METHODS)[i % len(METHODS)]
        explain_image(predictor, wide_image, method, target=CLASSES[i % 3])
        assert len(layer._forward_hooks) == 0 and len(layer._backward_hooks) == 0
        assert _all_hooks(net) == 0
        assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ModelError):
        explain_image(predictor, wide_image, layer="fc")  # fails inside the CAM call
    assert _all_hooks(net) == 0


def test_one_channel_model_and_named_target(predictor: Predictor, wide_image: np.ndarray) -> None:
    first_conv = next(m for m in predictor.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    maps = {c: explain_image(predictor, wide_image, "gradcam", target=c) for c in CLASSES}
    assert [maps[c].target_class for c in CLASSES] == list(CLASSES)
    assert not np.allclose(maps["normal"].heatmap, maps["malignant"].heatmap)
    batch = explain_batch(predictor, [wide_image, wide_image[:, ::-1].copy()], "gradcam", ["benign", None])
    np.testing.assert_allclose(batch[0].heatmap, maps["benign"].heatmap, atol=1e-5)
    assert batch[1].target_class == batch[1].prediction.class_name


def test_layer_override(predictor: Predictor, wide_image: np.ndarray) -> None:
    e = explain_image(predictor, wide_image, "gradcam", layer="features.stage2")
    assert e.heatmap.shape == (48, 80)
    assert _all_hooks(predictor.net) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"method": "lime"},
            LungctError,
            r"unknown explanation method 'lime'; choose one of: gradcam, gradcam\+\+",
        ),
        (
            {"target": "cancer"},
            LungctError,
            r"unknown class 'cancer'; choose one of: normal, benign, malignant",
        ),
        (
            {"layer": "features.stage9"},
            ModelError,
            r"has no layer 'features.stage9'; top-level layers: features",
        ),
        ({"layer": "fc"}, ModelError, r"layer 'fc' outputs shape \(1, 3\); .*convolutional feature map"),
    ],
)
def test_bad_requests_raise_one_line_errors(predictor, wide_image, kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern) as info:
        explain_image(predictor, wide_image, **kwargs)
    assert "\n" not in str(info.value)


def test_overlay_and_pngs(tmp_path: Path, wide_image: np.ndarray) -> None:
    heat = np.zeros_like(wide_image)
    heat[10:20, 30:50] = 1.0
    rgb = overlay(wide_image, heat, alpha=0.4)
    assert rgb.shape == (48, 80, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[15, 40], rgb[40, 5]), "hot and cold pixels must differ in colour"
    grey = np.round(255 * wide_image[0, 0])
    assert abs(int(rgb[0, 0, 0]) - (0.6 * grey + 0.4 * 0)) <= 1, "cold pixels: 60 % grey + 40 % dark blue"
    data = overlay_png(wide_image, heat, tmp_path / "sub" / "o.png", title="gradcam")
    assert data.startswith(PNG_MAGIC) and (tmp_path / "sub" / "o.png").read_bytes() == data
    with Image.open(tmp_path / "sub" / "o.png") as im:
        assert im.width > im.height, "the colour bar sits beside a wide image"
    raw = heatmap_png(heat)
    with Image.open(__import__("io").BytesIO(raw)) as im:
        assert im.mode == "RGBA" and im.size == (80, 48)
        alpha = np.array(im)[..., 3]
    assert alpha[15, 40] == 255 and alpha[40, 5] == 0
    with pytest.raises(LungctError, match="same"):
        overlay(wide_image, heat[:, :40])


def test_shortcut_energy_and_body_mask() -> None:
    img, _ = make_phantom("normal", 64, 1)
    img = img.astype(np.float32) / 255.0
    body = body_mask(img)
    assert body is not None and 0.2 < body.mean() < 0.7
    assert body[32, 32] and not body[1, 1], "centre is body (lungs included), corner is background"
    inside, outside = body.astype(np.float32), (~body).astype(np.float32)
    res = shortcut_energy(
        [inside, outside, 0.5 * inside + 0.5 * outside], [img] * 3, ["normal", "benign", "benign"]
    )
    assert res["n_images"] == 3 and res["n_skipped"] == 0
    assert res["per_class"]["normal"] == pytest.approx(0.0)
    assert res["per_class"]["benign"] == pytest.approx(
        (1.0 + outside.sum() / (inside.sum() + outside.sum())) / 2
    )
    assert shortcut_energy([np.zeros_like(img)], [img])["n_skipped"] == 1


def test_faithfulness_structure_and_random_baseline(predictor: Predictor, wide_image: np.ndarray) -> None:
    res = faithfulness(predictor, [wide_image, wide_image[::-1].copy()], ["gradcam", "eigencam"], n_steps=4)
    assert res["n_images"] == 2 and res["n_steps"] == 4 and "deletion" in res["definition"]
    for key in ("gradcam", "eigencam", "random"):
        assert 0.0 <= res[key]["deletion_auc"] <= 1.0 and 0.0 <= res[key]["insertion_auc"] <= 1.0
    again = faithfulness(predictor, [wide_image, wide_image[::-1].copy()], ["gradcam", "eigencam"], n_steps=4)
    assert again == res, "seeded: identical results"


def test_pointing_game_beats_random_maps(phantom_model: Predictor) -> None:
    imgs, labels, masks = phantom_set(12, 96, seed=2)
    accuracy = np.mean([p.label for p in phantom_model.predict_images(imgs)] == labels)
    assert accuracy >= 0.6, f"phantom model did not learn the task (accuracy {accuracy:.2f})"
    res = pointing_game(phantom_model, imgs, masks, "gradcam", targets=[CLASSES[y] for y in labels])
    assert res["n_images"] == 24  # normal phantoms have empty masks and are skipped
    assert res["random_hit_rate"] == pytest.approx(res["expected_random_hit_rate"], abs=0.03)
    assert res["random_hit_rate"] < 0.15
    assert res["hit_rate"] >= 0.5 and res["hit_rate"] >= res["random_hit_rate"] + 0.35, res
    faith = faithfulness(phantom_model, [im for im, y in zip(imgs, labels, strict=True) if y == 2], "gradcam")
    assert faith["gradcam"]["deletion_auc"] < faith["random"]["deletion_auc"], faith
    assert faith["gradcam"]["insertion_auc"] > faith["random"]["insertion_auc"], faith


def test_pointing_game_input_checks(predictor: Predictor, wide_image: np.ndarray) -> None:
    with pytest.raises(LungctError, match="non-empty lesion mask"):
        pointing_game(predictor, [wide_image], [np.zeros((48, 80), bool)])
    with pytest.raises(LungctError, match="one mask"):
        pointing_game(predictor, [wide_image], [])


def test_run_explain_writes_gallery_overlays_and_metrics(tiny_run: Path) -> None:
    metrics_path = tiny_run / "eval" / "test" / "metrics.json"
    before = json.loads(metrics_path.read_text())
    res = run_explain(tiny_run, None, max_images=6, progress=False, n_steps=4)
    out = tiny_run / "eval" / "test" / "explain"
    gallery = (out / "gallery.html").read_text()
    overlays = sorted((out / "overlays").glob("*.png"))
    assert res["n_gallery"] == len(overlays) // 3 and 1 <= res["n_gallery"] <= 6
    assert len(overlays) == 3 * res["n_gallery"] and 1 <= res["n_images"] <= 6
    assert "random sample" in res["sample"]
    links = re.findall(r'src="([^"]+)"', gallery)
    assert sorted(links) == sorted(f"overlays/{p.name}" for p in overlays)
    assert "http" not in gallery.replace("http-equiv", "") and "<script" not in gallery
    assert "Correct predictions" in gallery or "Wrong predictions" in gallery
    after = json.loads(metrics_path.read_text())
    assert after["explain"] == json.loads(json.dumps(res))
    assert {k: v for k, v in after.items() if k != "explain"} == {
        k: v for k, v in before.items() if k != "explain"
    }
    for m in ("gradcam", "gradcam++", "eigencam"):
        f = res["faithfulness"][m]
        assert set(f) >= {"deletion_auc", "insertion_auc"}
        if res["n_images"] > 1:  # method minus random map, with a bootstrap CI around the mean difference
            vr = f["vs_random"]
            lo, hi = vr["insertion_diff_ci95"]
            assert lo <= vr["insertion_diff"] <= hi
        assert (
            res["shortcut_energy"][m]["n_images"] + res["shortcut_energy"][m]["n_skipped"] == res["n_images"]
        )
    assert "pointing_game" in res, "phantom data carries lesion masks"
    assert json.loads((out / "explain.json").read_text()) == json.loads(json.dumps(res))


def test_run_explain_on_given_images_leaves_metrics_alone(
    tiny_run: Path, phantom_root: Path, tmp_path
) -> None:
    metrics_path = tiny_run / "eval" / "test" / "metrics.json"
    before = metrics_path.read_text()
    files = sorted((phantom_root / "Malignant cases").glob("*.png"))[:2]
    res = run_explain(
        tiny_run,
        tmp_path / "x",
        images=files,
        methods=("gradcam",),
        target="malignant",
        progress=False,
        n_steps=2,
    )
    assert res["n_images"] == 2 and res["target"] == "malignant" and res["source"] == "given images"
    assert len(list((tmp_path / "x" / "overlays").glob("*.png"))) == 2
    assert "Unlabelled images (2)" in (tmp_path / "x" / "gallery.html").read_text()
    assert metrics_path.read_text() == before
    with pytest.raises(LungctError, match="unknown explanation method"):
        run_explain(tiny_run, tmp_path / "y", images=files, methods=("gradcam", "shap"), progress=False)
