"""Where the repository is, for tests at any depth of the tests/ tree (which mirrors the source)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
