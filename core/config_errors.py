"""Config problems as users read them: `file:line: key: why`, all of a file's at once."""

from __future__ import annotations

from dataclasses import dataclass

from core.config_base import KeyPath


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = format_path(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one config (or map) file; the CLI prints them and exits 2."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def format_path(path: KeyPath) -> str:
    """("meters", 0, "bus") -> "meters[0].bus"."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text
