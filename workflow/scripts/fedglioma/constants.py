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
