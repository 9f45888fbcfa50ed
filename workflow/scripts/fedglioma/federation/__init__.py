"""The cross-institution mode over Flower (docs/federation.md): the consortium's certificates and SuperNode keys
(:mod:`~fedglioma.federation.pki`), a site's and the coordinator's round on files with the workflow's own step
functions (:mod:`~fedglioma.federation.roles`), the Flower ClientApp and ServerApp that carry the bytes between them
(:mod:`~fedglioma.federation.apps`), and the commands that start each role (:mod:`~fedglioma.federation.cli`).

Nothing here is imported by the workflow; ``cryptography`` and ``flwr`` are imported only by the commands that
need them (optional group ``federation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.federation.pki import make_pki, ssh_fingerprint
    from fedglioma.federation.roles import CoordinatorRole, SiteRole

#: public name -> submodule; imported on first use (PEP 562), so that building the command line does not import
#: ``cryptography``
_EXPORTS: dict[str, str] = {"make_pki": "pki", "ssh_fingerprint": "pki", "CoordinatorRole": "roles",
                            "SiteRole": "roles"}

__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = ["CoordinatorRole", "SiteRole", "make_pki", "ssh_fingerprint"]
