"""Write a NIfTI-like volume as a DICOM MR series (one file per slice), for tests of the DICOM input.

The series is classic MR Image Storage, explicit VR little endian, signed 16-bit pixels with an optional rescale
slope/intercept. Geometry follows the NIfTI affine exactly: voxel axis 0 runs along the columns of each slice,
axis 1 along the rows and axis 2 across slices, with NIfTI's RAS+ world converted to DICOM's LPS+. UIDs come from
``pydicom.uid.generate_uid`` with fixed entropy sources, so the same call writes the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: RAS+ (NIfTI) to LPS+ (DICOM) and back: flip the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: A small test affine: 0.9 x 0.9 x 2 mm voxels, x flipped (LAS storage), origin off the voxel grid.
TEST_AFFINE = np.array([
    [-0.9, 0.0, 0.0, 10.45],
    [0.0, 0.9, 0.0, -15.3],
    [0.0, 0.0, 2.0, -20.1],
    [0.0, 0.0, 0.0, 1.0],
])

#: The same voxel sizes acquired coronally: voxel axes (x, z, y) in world order, slices along anterior-posterior.
CORONAL_AFFINE = np.array([
    [0.9, 0.0, 0.0, -11.2],
    [0.0, 0.0, -2.0, 17.6],
    [0.0, 0.9, 0.0, -9.35],
    [0.0, 0.0, 0.0, 1.0],
])


def uid(*parts: object) -> str:
    """A deterministic UID from ``parts`` (pydicom's root prefix, SHA-512 of the parts)."""
    return str(generate_uid(entropy_srcs=["fedglioma-test", *map(str, parts)]))


def phantom(shape: tuple[int, int, int] = (24, 28, 20), seed: int = 0) -> np.ndarray:
    """A float32 test volume: a bright off-centre ellipsoid on a textured background (values about 0-1000)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] * np.array([0.4, 0.55, 0.5])[:, None, None, None]
    r = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] / 4)) ** 2).sum(0))
    data = 200 + 600 * (r < 1) + 100 * np.sin(grid[0] / 3) + rng.uniform(0, 50, shape)
    return data.astype(np.float32)


def write_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray = TEST_AFFINE,
    *,
    series_number: int,
    description: str,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    modality: str = "MR",
    slope: float = 1.0,
    intercept: float = 0.0,
    study: str = "study-1",
    patient_name: str = "Doe^Jane",
    patient_id: str = "PAT-0042",
    prefix: str = "IM",
    volumes: int = 1,
) -> list[Path]:
    """Write ``data`` (3D, voxel order of ``affine``) as one DICOM file per slice under ``folder``.

    Stored pixels are ``round((data - intercept) / slope)`` as int16, so converting back gives ``data`` within
    ``slope / 2``. ``volumes > 1`` writes the volume that many times at the same positions (a 4D series, e.g.
    dynamic or multi-echo), with increasing temporal position. Returns the files written, slice by slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lin = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    row_cosine = RAS_TO_LPS @ lin[:, 0] / spacing[0]  # direction of increasing column index (voxel axis 0)
    col_cosine = RAS_TO_LPS @ lin[:, 1] / spacing[1]  # direction of increasing row index (voxel axis 1)
    stored = np.round((np.asarray(data, float) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("data do not fit int16 with this slope and intercept")
    stored = stored.astype(np.int16)
    series_uid = uid(study, "series", series_number, description)
    study_uid = uid(study)
    frame_uid = uid(study, "frame")
    files = []
    for t in range(volumes):
        for k in range(data.shape[2]):
            n = t * data.shape[2] + k + 1
            sop = uid(series_uid, n)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "F"
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240102"
            ds.StudyTime = "101500"
            ds.SeriesTime = ds.AcquisitionTime = f"{102000 + series_number * 100:06d}.{t:06d}"
            ds.AccessionNumber = "ACC-7"
            ds.InstitutionName = "Test Hospital"
            ds.Modality = modality
            ds.Manufacturer = "SIEMENS"
            ds.MagneticFieldStrength = 3
            ds.SeriesNumber = series_number
            ds.SeriesDescription = description
            ds.ProtocolName = description
            ds.ImageType = list(image_type)
            ds.InstanceNumber = n
            ds.AcquisitionNumber = 1
            ds.TemporalPositionIdentifier = t + 1
            ds.NumberOfTemporalPositions = volumes
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 2000
            ds.EchoTime = 10
            ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_cosine, *col_cosine)]
            position = RAS_TO_LPS @ (np.asarray(affine, float) @ [0, 0, k, 1])[:3]
            ds.ImagePositionPatient = [round(float(v), 4) for v in position]
            ds.SliceLocation = round(float(position[2]), 4)
            ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]  # row spacing, column spacing
            ds.SliceThickness = round(float(spacing[2]), 6)
            ds.SpacingBetweenSlices = round(float(spacing[2]), 6)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = data.shape[1], data.shape[0]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
            ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # pixel [row, col] = voxel [col, row]
            path = folder / f"{prefix}{series_number:03d}_{n:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files
