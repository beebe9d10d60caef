"""DICOM for the web service: one slice to pixels plus the few header facts needed, series order,
and de-identification.

Only non-identifying header values leave this module (modality, orientation, position along the
slice normal, instance number, image type flags). Nothing here logs or stores a tag value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungct.data.imaging import LUNG_WINDOW, Window, dicom_to_hu
from lungct.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup", "PatientComments",
    "AdditionalPatientHistory", "MedicalRecordLocator", "IssuerOfPatientID",
    "PatientInsurancePlanCodeSequence", "AccessionNumber", "StudyID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
    "InstanceCreationDate", "InstanceCreationTime", "AcquisitionDateTime", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician", "StationName", "DeviceSerialNumber", "StudyDescription", "SeriesDescription",
    "ImageComments", "RequestAttributesSequence", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ProtocolName",
)  # fmt: skip
"""Attributes removed by :func:`deidentify` (names, ids, dates, places, people, free text)."""

BLANKED_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "ReferringPhysicianName", "StudyID",
)  # fmt: skip
"""Type 2 attributes that a valid file keeps, but empty."""

UID_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "InstanceCreatorUID",
)


@dataclass(frozen=True)
class DicomSlice:
    """One decoded DICOM slice and the header facts the service uses.

    ``image``: float32 (H, W) in [0, 1] (lung window); ``hu``: float32 (H, W) Hounsfield units;
    ``position``: mm along the slice normal (None if the header lacks geometry); ``axial``: whether
    the slice normal is within ~35 degrees of the patient z axis (None if unknown).
    """

    image: np.ndarray
    hu: np.ndarray
    modality: str | None
    position: float | None
    instance: int | None
    axial: bool | None
    localizer: bool
    colour: bool
    series_key: str | None


def read_slice(data: bytes, name: str = "upload", window: Window = LUNG_WINDOW) -> DicomSlice:
    """DICOM Part-10 bytes -> :class:`DicomSlice`. Raises ImageReadError when unreadable."""
    hu, ds = dicom_to_hu(data, name)
    if hu.ndim != 2:
        raise ImageReadError(f"{name}: expected a 2-D DICOM image, got shape {hu.shape}")
    normal = _slice_normal(ds)
    position = None
    ipp = _floats(getattr(ds, "ImagePositionPatient", None), 3)
    if normal is not None and ipp is not None:
        position = float(np.dot(normal, ipp))
    elif ipp is not None:
        position = float(ipp[2])
    instance = getattr(ds, "InstanceNumber", None)
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    series = getattr(ds, "SeriesInstanceUID", None)
    return DicomSlice(
        image=window.apply(hu),
        hu=hu,
        modality=str(ds.Modality) if getattr(ds, "Modality", None) else None,
        position=position,
        instance=_int_or_none(instance),
        axial=None if normal is None else bool(abs(normal[2]) >= 0.82),
        localizer=any(t in ("LOCALIZER", "SCOUT", "TOPOGRAM") for t in image_type),
        colour=not photometric.startswith("MONOCHROME"),
        series_key=str(series) if series else None,
    )


def _int_or_none(value: object) -> int | None:
    """An integer attribute, or None when missing or malformed (e.g. a non-numeric InstanceNumber)."""
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _floats(value: object, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _slice_normal(ds: Dataset) -> np.ndarray | None:
    """Unit normal of the image plane from ImageOrientationPatient (row x column cosines)."""
    iop = _floats(getattr(ds, "ImageOrientationPatient", None), 6)
    if iop is None:
        return None
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


def series_order(slices: Sequence[DicomSlice | None]) -> tuple[list[int], str]:
    """Display order of a study's slices and how it was found.

    Sorted by position along the slice normal when every slice is DICOM with geometry, else by
    InstanceNumber when every slice has one, else upload order. Returns (indices, basis) with
    basis in {"position", "instance", "upload"}.
    """
    idx = list(range(len(slices)))
    positions = [s.position if s is not None else None for s in slices]
    instances = [s.instance if s is not None else None for s in slices]
    for keys, basis in ((positions, "position"), (instances, "instance")):
        if keys and all(k is not None for k in keys):
            return sorted(idx, key=lambda i: (keys[i], i)), basis
    return idx, "upload"


def deidentify(ds: Dataset) -> Dataset:
    """Strip identifying attributes from a pydicom Dataset in place and return it.

    Removes the attributes in :data:`IDENTIFYING_KEYWORDS` and all private tags, keeps the type 2
    ones in :data:`BLANKED_KEYWORDS` present but empty, replaces instance UIDs with new random ones
    and marks the dataset with PatientIdentityRemoved = "YES".
    """
    from pydicom.uid import generate_uid

    for keyword in IDENTIFYING_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in BLANKED_KEYWORDS:
        setattr(ds, keyword, "")
    for keyword in UID_KEYWORDS:
        if keyword in ds:
            setattr(ds, keyword, generate_uid())
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "lungct.data.dicom.deidentify"
    return ds
