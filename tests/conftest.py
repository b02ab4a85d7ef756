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


@pytest.fixture(autouse=True)
def _lightning_logs_to_the_current_stderr():
    """Lightning's log handlers keep the stderr of the test that first imported it; pytest closes that
    stream after the test, and a later log call prints "--- Logging error ---" with a traceback into
    another test's captured stderr. Point them at the current stderr before every test."""
    import logging
    import sys

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler:
                    handler.stream = sys.stderr  # not setStream: it would flush the closed stream
    yield
