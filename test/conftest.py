"""Shared fixtures. Sets the loopback-only DDS environment before anything imports rclpy."""
import os

# Two weak cores: keep torch and OpenBLAS from oversubscribing them when nodes and tests share a
# process. Set before anything imports numpy, which reads it once: the test process then sums
# in the same order as the processes it starts (they get it from the environment), so their
# float32 results agree bit for bit.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402

from lightmer.harness.rig import LOOPBACK  # noqa: E402

# DDS must never leave loopback (see README, "DDS stays on loopback"). The variable must be set
# before rclpy initialises a context, so it is set at the top of conftest, which pytest
# imports before any test module. scripts/test.sh sets the same and adds a network namespace.
os.environ.update(LOOPBACK)
# A domain of this test run's own so that parallel runs never cross; test.sh picks one.
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))

# Session fixtures with a generated corpus and a prepared cache (tiny_corpus, tiny_cache, ...).
pytest_plugins = ['fixtures_data']


@pytest.fixture(scope='session')
def ros_env() -> dict:
    """Environment for subprocesses that speak DDS: the same loopback settings as this one."""
    return {**os.environ, **LOOPBACK}


@pytest.fixture
def _one_thread():
    """torch on one intra-op thread for the test (runs compared bit for bit need the same
    reduction order), restored afterwards."""
    # Here, not at the top: every pytest run loads conftest, and most tests never need torch.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
