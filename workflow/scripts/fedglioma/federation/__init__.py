"""The cross-institution mode over Flower (issue 18, docs/federation.md): being built; its first part is the
consortium's certificates and SuperNode keys (:mod:`fedglioma.federation.pki`, ``fedglioma federation pki``).

Nothing here is imported by the workflow; ``cryptography`` (and later ``flwr``) are imported only by the command
that needs them (optional group ``federation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.federation.pki import make_pki, ssh_fingerprint

#: public name -> submodule; imported on first use (PEP 562), so that building the command line does not import
#: ``cryptography``
_EXPORTS: dict[str, str] = {"make_pki": "pki", "ssh_fingerprint": "pki"}

__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = ["make_pki", "ssh_fingerprint"]
