"""Lint as a test: pycodestyle, pyflakes, bugbear and pep257 docstrings (ruff.toml)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which('ruff')
    if ruff is None:
        pytest.skip('ruff not installed (it is in requirements.txt)')
    out = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_silent_exception_swallowing():
    """`except: pass` / `except Exception: pass` hide typos and bad values; none allowed."""
    import re
    pat = re.compile(r'except[^:\n]*:\s*\n\s*pass\b')
    files = [p for d in ('geo_depth_node', 'test', 'tools', 'launch') for p in (REPO / d).rglob('*.py')]
    assert len(files) > 20
    bad = [str(p.relative_to(REPO)) for p in files if pat.search(p.read_text())]
    assert not bad, bad
