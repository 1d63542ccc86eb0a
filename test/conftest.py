"""Shared fixtures. No test/__init__.py on purpose: the installed package must win."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _interpret_triton_without_gpu() -> None:
    """No GPU: make Triton run its kernels in the CPU interpreter (``triton_device``). The
    switch must happen before triton is first imported, so it is made here, at collection."""
    if 'triton' in sys.modules or 'TRITON_INTERPRET' in os.environ:
        return
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ['TRITON_INTERPRET'] = '1'


_interpret_triton_without_gpu()
SHARED_DATA = Path(os.environ.get('GEO_DEPTH_SHARED_DATA', REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def repo_root() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """../shared/data (real data sets made by others)."""
    return SHARED_DATA


@pytest.fixture(scope='session')
def triton_device():
    """The torch device on which the Triton kernels run in this test session.

    CUDA when torch sees a GPU; otherwise the CPU under Triton's interpreter
    (``sgm_triton.use_interpreter``: the kernels' Python bodies run with numpy, slowly, with
    the same arithmetic), so the GPU kernels are checked against the torch reference on
    every machine. Skips when triton is not installed.
    """
    torch = pytest.importorskip('torch')
    pytest.importorskip('triton')
    from geo_depth_node.core import sgm_triton

    if torch.cuda.is_available():
        return torch.device('cuda')
    sgm_triton.use_interpreter()
    return torch.device('cpu')
