"""Where the repository's files are, for tests that read or run them."""

from pathlib import Path
from typing import Final

#: The repository's root folder (pyproject.toml, README.md, config.example.yaml, ...).
REPO: Final = Path(__file__).resolve().parents[1]
