"""Tool of ``fedglioma predict``: ``patient``, one new patient from NIfTI files or DICOM series with a model bundle
(the workflow steps ``predict export-bundle``, ``predict subject`` and ``predict table`` come from the registry).
Its options are built from :func:`fedglioma.predict.patient.predict_patient`'s signature, as a step's are."""

from __future__ import annotations

import argparse


def _predict(args: argparse.Namespace) -> int:
    from fedglioma.predict.patient import predict_patient
    from fedglioma.registry import cli_kwargs
    from fedglioma.threads import set_threads

    kwargs = cli_kwargs(predict_patient, args)
    set_threads(kwargs.get("threads", 1))
    predict_patient(**kwargs)
    print(f"prediction written to {kwargs['out']} (prediction.json, prediction.html)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "patient",
        help="one new patient: the four sequences (NIfTI files or a DICOM folder) and a model bundle -> tumour "
             "mask on the input grid, marker probabilities and calls, QC, a one-page HTML report",
        description="Predict one patient with a model bundle (results/model/fedglioma-<name>.zip): the bundle's "
                    "preprocessing recipe, the network, the whole-tumour mask mapped back onto the input T1c grid. "
                    "Writes prediction.json, sub-<ID>_desc-tumour_mask.nii.gz, prediction.html and prediction.png "
                    "into --out, all or nothing.",
    )
    from fedglioma.predict.patient import predict_patient  # light: numpy, nibabel (torch and ANTs load lazily)
    from fedglioma.registry import add_arguments

    add_arguments(p, predict_patient)
    p.set_defaults(func=_predict)
