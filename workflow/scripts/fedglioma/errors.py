"""Exceptions with messages that name the site, subject and file at fault."""

from __future__ import annotations

from collections.abc import Sequence
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


class InputErrors(InputError):
    """Several input problems found together (every row of a table, every subject of a site), listed one a line.

    ``problems`` holds each one (an :class:`InputError` naming its own site, subject, file and fix), so a check
    that collects problems (``fedglioma cohort check-inputs``) lists them one by one.

    >>> e = InputErrors([InputError("a", site="A", fix="x"), InputError("b", site="B", fix="y")])
    >>> print(e)
    2 problems:
      - site A: a. Fix: x
      - site B: b. Fix: y
    """

    def __init__(self, problems: Sequence[InputError]) -> None:
        self.problems = [q for p in problems for q in (p.problems if isinstance(p, InputErrors) else [p])]
        if not self.problems:
            raise ValueError("InputErrors needs at least one problem")
        super().__init__("; ".join(p.problem for p in self.problems))

    def _format(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        return f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)


def raise_all(problems: Sequence[InputError]) -> None:
    """Raise the problems found (one :class:`InputError`, or :class:`InputErrors` for several); none: return."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputErrors(problems)


class ConfigError(FedgliomaError):
    """Invalid configuration or parameters."""


class UpdateRejected(FedgliomaError):
    """A model update failed the server-side checks (names site and round)."""
