"""Synthetic phantoms: seeded, anatomically ordered (lesion inside a lung), readable dataset layout."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from lungct import CLASSES
from lungct.data.discovery import list_dataset
from lungct.data.imaging import read_image
from lungct.data.phantoms import KAGGLE_FOLDERS, MASK_FOLDER, make_phantom, make_series, write_phantom_dataset
from lungct.errors import DataError


def _tree_digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", CLASSES)
def test_same_seed_same_pixels_other_seed_differs(kind):
    a, ma = make_phantom(kind, 64, 7)
    b, mb = make_phantom(kind, 64, np.random.default_rng(7))
    c, _ = make_phantom(kind, 64, 8)
    assert a.dtype == np.uint8 and a.shape == (64, 64) and ma.dtype == bool and ma.shape == (64, 64)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_width_gives_non_square_image():
    img, mask = make_phantom("malignant", 64, 0, width=96)
    assert img.shape == (64, 96) and mask.shape == (64, 96) and mask.any()


@pytest.mark.parametrize("seed", range(6))
def test_lesion_mask_inside_body_and_lung(seed):
    _, normal_mask = make_phantom("normal", 128, seed)
    assert not normal_mask.any()
    for kind in ("benign", "malignant"):
        img, mask = make_phantom(kind, 128, seed)
        assert mask.any(), kind
        body = ndimage.binary_fill_holes(img > 60)
        labels, _ = ndimage.label(body)
        largest = labels == np.argmax(np.bincount(labels[body])) if body.any() else body
        assert largest[mask].all(), f"{kind} lesion leaves the body"
        ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
        assert (img[ring] < 70).any(), f"{kind} lesion is not next to dark lung"
        assert img[mask].mean() > img[ring].mean() + 20, f"{kind} lesion is not brighter than its surround"


def test_malignant_lesion_larger_than_benign():
    benign = [make_phantom("benign", 128, s)[1].sum() for s in range(12)]
    malignant = [make_phantom("malignant", 128, s)[1].sum() for s in range(12)]
    assert min(malignant) > max(benign)
    # radius ~2-4 % of size for benign, ~6-10 % for malignant (area in px at 128 px)
    assert np.pi * (0.015 * 128) ** 2 < np.median(benign) < np.pi * (0.045 * 128) ** 2
    assert np.pi * (0.05 * 128) ** 2 < np.median(malignant) < np.pi * (0.12 * 128) ** 2


def test_series_slices_are_near_identical_and_patients_differ():
    series = make_series("benign", 4, 64, 3)
    other = make_series("benign", 1, 64, 4)[0][0]
    assert len(series) == 4

    def corr(a, b):
        return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]

    within = [corr(series[k][0], series[k + 1][0]) for k in range(3)]
    assert min(within) > 0.9
    assert corr(series[0][0], other) < min(within)
    assert all(m.any() for _, m in series)


def test_unknown_kind_and_tiny_size_raise():
    with pytest.raises(DataError, match="unknown phantom kind"):
        make_phantom("cancerous", 64, 0)
    with pytest.raises(DataError, match="at least 16"):
        make_phantom("normal", 8, 0)


def test_dataset_layout_readable_and_seeded(tmp_path):
    root = write_phantom_dataset(
        tmp_path / "a",
        n_patients={"normal": 2, "benign": 1, "malignant": 3},
        slices_per_patient=2,
        size=48,
        seed=5,
        masks=True,
    )
    listing = list_dataset(root)
    counts = {c: sum(s.class_name == c for s in listing.samples) for c in CLASSES}
    assert counts == {"normal": 4, "benign": 2, "malignant": 6}
    assert not listing.skipped
    assert {p.name for p in root.iterdir()} == {*KAGGLE_FOLDERS.values(), MASK_FOLDER, "PHANTOM.md"}
    assert "synthetic" in (root / "PHANTOM.md").read_text().lower()
    for s in listing.samples:
        img, info = read_image(s.path)
        assert img.shape == (48, 48) and info.format == "PNG"
        mask_file = root / MASK_FOLDER / s.path.parent.name / (s.path.stem + ".png")
        mask, _ = read_image(mask_file)
        assert mask.any() == (s.class_name != "normal")
    again = write_phantom_dataset(
        tmp_path / "b",
        n_patients={"normal": 2, "benign": 1, "malignant": 3},
        slices_per_patient=2,
        size=48,
        seed=5,
        masks=True,
    )
    assert _tree_digest(root) == _tree_digest(again)
    other = write_phantom_dataset(
        tmp_path / "c",
        n_patients={"normal": 2, "benign": 1, "malignant": 3},
        slices_per_patient=2,
        size=48,
        seed=6,
    )
    assert (
        _tree_digest(other)["Normal cases/Normal case (1).png"]
        != _tree_digest(root)["Normal cases/Normal case (1).png"]
    )


def test_dataset_jpeg_and_custom_folders(tmp_path):
    root = write_phantom_dataset(
        tmp_path / "d",
        n_patients=1,
        slices_per_patient=2,
        size=32,
        fmt="jpg",
        folder_names={"normal": "Healthy", "benign": "Benign", "malignant": "Cancer"},
    )
    listing = list_dataset(root, class_map={"Healthy": "normal", "Benign": "benign", "Cancer": "malignant"})
    assert len(listing.samples) == 6
    assert all(read_image(s.path)[1].format == "JPEG" for s in listing.samples)
    with pytest.raises(DataError, match="unknown phantom format"):
        write_phantom_dataset(tmp_path / "e", fmt="gif")
