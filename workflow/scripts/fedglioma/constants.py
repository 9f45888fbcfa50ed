"""Names shared across the package."""

from __future__ import annotations

#: Canonical modality names, in the channel order of every training file.
MODALITIES: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")

#: Classification targets. Binary targets are 0/1; grade is WHO 2/3/4.
TASKS: tuple[str, ...] = ("idh", "codeletion", "mgmt", "grade")
BINARY_TASKS: tuple[str, ...] = ("idh", "codeletion", "mgmt")
GRADES: tuple[int, ...] = (2, 3, 4)

#: Pattern every site and subject ID must match (no path separators, no dots).
ID_PATTERN = r"^[A-Za-z0-9_-]+$"

#: Default largest image (MiB of voxel data as the NIfTI header gives it) that is loaded (config
#: ``inputs.max_image_mb``): a 240x240x155 float32 BraTS volume is 34 MiB, a 512x512x400 float64 one 800 MiB.
MAX_IMAGE_MB: float = 2048.0
