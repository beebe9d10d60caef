"""What lungct's output instances may carry about the patient: the attributes DICOM needs to file them
into the right patient and study, nothing more."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lungct.data.dicom import IDENTIFYING_KEYWORDS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

LINKING_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
        "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "SeriesDescription",
    }
)  # fmt: skip
"""Kept: type 1/2 attributes of the Patient and General Study modules (copied from the source CT so
the PACS files the result into the same patient and study), the output's own dates and description."""


def keep_linking_only(ds: Dataset) -> Dataset:
    """Remove every identifying attribute (:data:`lungct.data.dicom.IDENTIFYING_KEYWORDS`) that is not
    needed for linking, and all private tags, from an output dataset (in place)."""
    for keyword in IDENTIFYING_KEYWORDS:
        if keyword not in LINKING_KEYWORDS and keyword in ds:
            delattr(ds, keyword)
    ds.remove_private_tags()
    return ds
