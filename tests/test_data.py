"""Finding datasets: data-folder resolution, class-folder mapping, listing, download fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lungct.data.discovery import (
    data_available,
    download,
    find_class_dirs,
    list_dataset,
    parse_class_map,
    resolve_data_dir,
)
from lungct.errors import DataError


def _make(root, folders):
    for f in folders:
        (root / f).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f / "a.png")


def test_kaggle_layout_with_typo_is_mapped(tmp_path):
    kaggle = tmp_path / "The IQ-OTHNCCD lung cancer dataset"
    _make(kaggle, ["Bengin cases", "Malignant cases", "Normal cases"])
    for root in (kaggle, tmp_path):  # the Kaggle folder or its parent
        dirs = find_class_dirs(root)
        assert set(dirs) == {"normal", "benign", "malignant"}
        assert dirs["benign"].name == "Bengin cases"


def test_case_insensitive_and_benign_spelling(tmp_path):
    _make(tmp_path, ["BENIGN", "malignant", "Normal"])
    assert set(find_class_dirs(tmp_path)) == {"normal", "benign", "malignant"}


def test_custom_class_map(tmp_path):
    _make(tmp_path, ["Healthy", "Cancer"])
    with pytest.raises(DataError):
        find_class_dirs(tmp_path)
    dirs = find_class_dirs(tmp_path, parse_class_map("Healthy=normal, Cancer=malignant"))
    assert dirs["normal"].name == "Healthy" and dirs["malignant"].name == "Cancer"


def test_bad_class_map_entries():
    with pytest.raises(DataError):
        parse_class_map("Healthy")
    with pytest.raises(DataError):
        parse_class_map("Healthy=sick")


def test_listing_counts_non_images_as_skipped(tmp_path):
    _make(tmp_path, ["Normal", "Malignant"])
    (tmp_path / "Normal" / "notes.txt").write_text("x")
    listing = list_dataset(tmp_path)
    assert len(listing.samples) == 2
    assert [p.name for p, _ in listing.skipped] == ["notes.txt"]


def test_missing_and_empty_folders_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("LUNGCT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data folder not found"):
        resolve_data_dir(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        find_class_dirs(tmp_path / "empty")
    assert data_available(tmp_path / "empty") is None


def test_env_var_is_used(tmp_path, monkeypatch):
    _make(tmp_path / "d", ["Normal"])
    monkeypatch.setenv("LUNGCT_DATA", str(tmp_path / "d"))
    assert resolve_data_dir(None) == tmp_path / "d"
    assert resolve_data_dir(tmp_path) == tmp_path  # --data wins


def test_download_failure_is_a_clear_data_error(monkeypatch):
    import kagglehub

    def offline(handle):
        raise ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError, match="by hand"):
        download()
