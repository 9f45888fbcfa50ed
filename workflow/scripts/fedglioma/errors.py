"""Exceptions with messages that name the site, subject and file at fault."""

from __future__ import annotations

from pathlib import Path


class FedgliomaError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(FedgliomaError):
    """Bad input data: names site, subject and file, and says what to fix.

    >>> str(InputError("bad header", site="A", subject="001", file="x.nii.gz", fix="re-export"))
    'site A, subject 001, file x.nii.gz: bad header. Fix: re-export'
    """

    def __init__(
        self,
        problem: str,
        *,
        site: str | None = None,
        subject: str | None = None,
        file: str | Path | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.site = site
        self.subject = subject
        self.file = None if file is None else str(file)
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.site is not None:
            where.append(f"site {self.site}")
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.file is not None:
            where.append(f"file {self.file}")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


class ConfigError(FedgliomaError):
    """Invalid configuration or parameters."""


class UpdateRejected(FedgliomaError):
    """A model update failed the server-side checks (names site and round)."""
