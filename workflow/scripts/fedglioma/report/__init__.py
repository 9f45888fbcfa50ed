"""The standalone HTML report and its figures.

- :mod:`fedglioma.report.html`: :func:`~fedglioma.report.html.build_report` writes one ``index.html`` with every
  figure embedded as a base64 data URI (no network access, no external JS/CSS/fonts), rendered from the Jinja2
  template ``templates/report.html.j2`` (autoescaping on), and :func:`~fedglioma.report.html.headline_text` gives
  the headline metrics as a terminal table.
- :mod:`fedglioma.report.cohort`: the cohort table, formatted from the sites' cohort summaries.
- :mod:`fedglioma.report.figures`: training curves per site and round.
- :mod:`fedglioma.report.cli`: the ``report``, ``headline`` and ``training-curves`` subcommands.
"""
