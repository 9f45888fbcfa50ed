"""Tool of ``fedglioma report``: ``headline``, the external site's headline metrics as text (the workflow steps
``report curves`` and ``report html`` come from :mod:`fedglioma.registry`)."""

from __future__ import annotations

import argparse

from fedglioma.io.files import read_json


def _headline(args: argparse.Namespace) -> int:
    from fedglioma.report.html import headline_text

    print(headline_text(read_json(args.metrics, what="external-site metrics"), synthetic=args.synthetic), end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``headline`` to the ``report`` stage."""
    p = subparsers.add_parser("headline", help="print the external site's headline metrics as a text table")
    p.add_argument("--metrics", required=True, help="external site's metrics JSON (results/report/metrics.json)")
    p.add_argument("--synthetic", action="store_true", help="add the synthetic-data warning")
    p.set_defaults(func=_headline)
