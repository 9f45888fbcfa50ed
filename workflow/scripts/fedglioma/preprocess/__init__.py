"""Per-subject preprocessing steps (one Snakemake job each) and the inverse mapping to native space.

Each step reads the previous step folder and writes the next one atomically:

======================  ==============================================================
:func:`import_subject`  checked loading, header/FOV/label checks, RAS reorientation
:func:`coregister`      T1, T2, FLAIR rigidly onto the T1c grid
:func:`skullstrip`      HD-BET (or atlas / declared skull-stripped) brain mask
:func:`register_atlas`  T1c brain -> brain template, applied to all images and masks
:func:`n4`              N4 bias-field correction inside the brain mask
:func:`normalise`       intensity normalisation (``NORMALISERS``)
:func:`training_file`   network-grid ``sub-{subject}_train.npz`` + ``_grid.json``
:func:`to_native`       network-grid array -> original T1c grid
:func:`qc`, :func:`qc_site`  QC figure, row and site table
======================  ==============================================================

ANTsPy, HD-BET and matplotlib are imported only inside the functions that need them.
"""

from fedglioma.preprocess.atlas import register_atlas
from fedglioma.preprocess.coregister import coregister
from fedglioma.preprocess.grid import to_native, training_file
from fedglioma.preprocess.importing import import_subject
from fedglioma.preprocess.intensity import NORMALISERS, Normaliser, PercentileScale, ZScore, n4, normalise
from fedglioma.preprocess.qc import qc, qc_site
from fedglioma.preprocess.skullstrip import skullstrip, skullstrip_file

__all__ = [
    "NORMALISERS",
    "Normaliser",
    "PercentileScale",
    "ZScore",
    "coregister",
    "import_subject",
    "n4",
    "normalise",
    "qc",
    "qc_site",
    "register_atlas",
    "skullstrip",
    "skullstrip_file",
    "to_native",
    "training_file",
]
