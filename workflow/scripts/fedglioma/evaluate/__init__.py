"""Evaluation: external evaluation of a model, site summaries, figures, model comparison.

The metric functions on arrays (Dice, HD95, AUC with CIs, Youden thresholds, ...) are :mod:`fedglioma.metrics`, a
bottom-layer module that QC, training validation and model selection use too.

Modules:

- :mod:`fedglioma.evaluate.external`: a selected model on the external site (the workflow step ``evaluate``).
- :mod:`fedglioma.evaluate.site`: one site's aggregated metrics from per-subject tables (JSON-able dict).
- :mod:`fedglioma.evaluate.figures`: ROC, reliability, Dice and overlay figures (matplotlib Agg, PNG).
- :mod:`fedglioma.evaluate.compare`: federated vs centralized vs local-only comparison table.
- :mod:`fedglioma.evaluate.cli`: the ``evaluate metrics`` tool (metrics from per-subject tables).
"""
