"""Synthetic CT studies as real DICOM: phantom slices written as CT Image Storage instances.

For tests, benchmarks and demonstrations against a PACS: one patient, one study, one series,
consecutive axial slices (:func:`lungct.data.phantoms.make_series`) with Hounsfield units stored
through RescaleSlope/Intercept, positions along z and one Frame of Reference. The patient attributes
are obviously fake (``PHANTOM^TEST``).
"""

from __future__ import annotations

import datetime

import numpy as np

from lungct.data.phantoms import make_series

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

_GREY = np.array([0, 10, 28, 60, 100, 140, 255], dtype=np.float64)
_HU = np.array([-1000, -990, -850, -500, -50, 60, 1000], dtype=np.float64)
"""Phantom grey level -> HU (air, lung, soft tissue ~105-135, lesion ~175, bone ~230)."""


def phantom_hu(img: np.ndarray) -> np.ndarray:
    """uint8 phantom slice (H, W) -> int16 Hounsfield units (monotone piecewise-linear map)."""
    return np.rint(np.interp(img.astype(np.float64), _GREY, _HU)).astype(np.int16)


def phantom_ct_study(
    n_slices: int = 20,
    size: int = 128,
    kind: str = "malignant",
    seed: int = 0,
    *,
    modality: str = "CT",
    study_uid: str | None = None,
    patient_id: str = "PHANTOM-0001",
    spacing_mm: float = 2.5,
    pixel_mm: float = 0.7,
) -> list:
    """``n_slices`` pydicom Datasets of one axial series (ordered by z, InstanceNumber 1..n).

    ``modality``: "CT" (CT Image Storage, HU via rescale) or "MR" (MR Image Storage, raw values),
    for testing that lungct refuses non-CT series. ``study_uid``: put the series into an existing
    study (same patient attributes must be passed by the caller via ``patient_id``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    today = datetime.date(2026, 1, 2).strftime("%Y%m%d")
    out = []
    for k, (img, _) in enumerate(make_series(kind, n_slices, size, seed)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "PHANTOM^TEST", patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = today, "120000", "SYNTH1", "1"
        ds.ReferringPhysicianName, ds.StudyDescription = "", f"synthetic chest {modality} (phantom)"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = (
            f"phantom {kind}",
            1 if modality == "CT" else 2,
            k + 1,
        )
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = modality, "lungct-phantom", "CHEST"
        ds.PositionReferenceIndicator, ds.ImageType = "", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * pixel_mm / 2, -size * pixel_mm / 2, k * spacing_mm]
        ds.SliceLocation = k * spacing_mm
        ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], spacing_mm
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.KVP = -1024, 1, "HU", 120
            pixels = (phantom_hu(img).astype(np.int32) + 1024).astype(np.int16)
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = (
                "SE",
                "NONE",
                "",
                "2D",
            )
            ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 10, 500, 1.5
            pixels = img.astype(np.int16) * 8
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out
