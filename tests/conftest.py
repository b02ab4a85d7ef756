import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if "TORCHMF_SHARED" in os.environ:
    SHARED = Path(os.environ["TORCHMF_SHARED"])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_dir():
    """../shared of the steering repository (data published by others); tests skip where absent."""
    return SHARED


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: on a shared 2-core CPU, two OpenMP threads can be many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
