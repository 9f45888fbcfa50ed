"""What a site declares was already done to its images (the checks that hold it to that, on the images, are
:mod:`fedglioma.preprocess.site_checks`).

Public data sets arrive preprocessed: BraTS and UPENN-GBM skull-stripped, co-registered and
resampled to SRI24 (240x240x155, 1 mm); EGD to MNI152; UCSF-PDGM skull-stripped and
co-registered in its own grid. ``sites.tsv`` declares this per site (columns ``skull_stripped``,
``coregistered``, ``space``), and every preprocessing step reads it from one :class:`Declared`
value, whether it is called by a rule or by its subcommand. A declaration that the images
contradict stops the subject at import, before any long job, with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedglioma.errors import ConfigError

#: Spaces a site can declare: its own scanner space, or a template space.
SPACES = ("native", "MNI152", "SRI24")


@dataclass(frozen=True)
class Declared:
    """A site's declared state: ``skull_stripped``, ``coregistered`` and ``space`` (``native`` or a template)."""

    skull_stripped: bool = False
    coregistered: bool = False
    space: str = "native"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"unknown space {self.space!r}; known spaces: {', '.join(SPACES)}")

    @property
    def in_template(self) -> bool:
        """The images are already registered and resampled to a template space."""
        return self.space != "native"

    @property
    def is_coregistered(self) -> bool:
        """The sequences need no co-registration (declared, or implied by a template space)."""
        return self.coregistered or self.in_template

    def as_dict(self) -> dict[str, Any]:
        return {"skull_stripped": self.skull_stripped, "coregistered": self.is_coregistered, "space": self.space}
