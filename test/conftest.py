"""Shared fixtures. No test/__init__.py on purpose: the installed package must win."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('GEO_DEPTH_SHARED_DATA', REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def repo_root() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """../shared/data (real data sets made by others)."""
    return SHARED_DATA
