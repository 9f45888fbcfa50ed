"""Evaluation: segmentation and classification metrics, site summaries, figures, model comparison.

Modules:

- :mod:`fedglioma.evaluate.metrics`: metric functions on arrays (Dice, HD95, volume difference, AUC with a
  stratified bootstrap CI, thresholded sensitivity/specificity/accuracy, Brier score, reliability, paired
  bootstrap test, Youden threshold from summed confusion counts).
- :mod:`fedglioma.evaluate.site`: one site's aggregated metrics from per-subject tables (JSON-able dict).
- :mod:`fedglioma.evaluate.figures`: ROC, reliability, Dice and overlay figures (matplotlib Agg, PNG).
- :mod:`fedglioma.evaluate.compare`: federated vs centralized vs local-only comparison table.
- :mod:`fedglioma.evaluate.cli`: the ``metrics`` and ``compare`` subcommands.
"""
