"""Shared pytest configuration: every test gets its layer's marker from its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = ("unit", "model", "cluster", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the layer named by its top folder under tests/."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(root).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
