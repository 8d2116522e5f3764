"""Where a configuration problem is, and the error that carries all of them.

Every message names `file:line` so an operator can jump straight to the line;
a config check reports all semantic problems at once instead of one per run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in a configuration file (or `<override>` for command-line values)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Issue:
    """One problem: where, and what (already phrased for the operator)."""

    location: Location | None
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class ConfigError(Exception):
    """The configuration cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: Issue | list[Issue] | str, location: Location | None = None) -> None:
        if isinstance(issues, str):
            issues = [Issue(location, issues)]
        elif isinstance(issues, Issue):
            issues = [issues]
        self.issues: list[Issue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    @property
    def lines(self) -> list[str]:
        """Each problem as one `file:line: message` line."""
        return [str(i) for i in self.issues]
