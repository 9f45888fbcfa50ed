"""Per-subject preprocessing steps (one Snakemake job each) and the inverse mapping to native space.

Each step reads the previous step folder and writes the next one atomically:

- ``importing.import_subject``: checked loading, header/FOV/label checks, RAS reorientation;
- ``coregister.coregister``: T1, T2, FLAIR rigidly onto the T1c grid;
- ``skullstrip.skullstrip``: HD-BET (or atlas / declared skull-stripped) brain mask;
- ``atlas.register_atlas``: T1c brain -> brain template, applied to all images and masks;
- ``intensity.n4``: N4 bias-field correction inside the brain mask;
- ``intensity.normalise``: intensity normalisation (``NORMALISERS``);
- ``grid.training_file``: network-grid ``sub-{subject}_train.npz`` + ``_grid.json``;
- ``grid.to_native``: network-grid array -> original T1c grid;
- ``qc.qc``, ``qc.qc_site``: QC figure, row and site table.

The package imports nothing until a name is used (:mod:`fedglioma.lazy`): the Snakefile and the ``fedglioma``
command line read paths and options from :mod:`fedglioma.preprocess.chain` and ``preprocess.cli`` without
loading nibabel, SciPy or pandas. The functions named like their module (``coregister``, ``skullstrip``,
``qc``) are imported from that module, ``from fedglioma.preprocess.qc import qc``: as package attributes those
names are the modules. ANTsPy, HD-BET and matplotlib are imported only inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.preprocess.atlas import register_atlas
    from fedglioma.preprocess.grid import to_native, training_file
    from fedglioma.preprocess.importing import import_subject
    from fedglioma.preprocess.intensity import NORMALISERS, Normaliser, PercentileScale, ZScore, n4, normalise
    from fedglioma.preprocess.qc import qc_site
    from fedglioma.preprocess.skullstrip import skullstrip_file

#: public name -> submodule, imported on first use (PEP 562)
_EXPORTS: dict[str, str] = {
    "register_atlas": "atlas",
    **dict.fromkeys(("to_native", "training_file"), "grid"),
    "import_subject": "importing",
    **dict.fromkeys(("NORMALISERS", "Normaliser", "PercentileScale", "ZScore", "n4", "normalise"), "intensity"),
    "qc_site": "qc",
    "skullstrip_file": "skullstrip",
}

__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "NORMALISERS",
    "Normaliser",
    "PercentileScale",
    "ZScore",
    "import_subject",
    "n4",
    "normalise",
    "qc_site",
    "register_atlas",
    "skullstrip_file",
    "to_native",
    "training_file",
]
