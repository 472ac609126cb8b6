"""Data builders and paths shared by the tests."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
