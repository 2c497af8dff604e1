"""What every test file shares: hypothesis's profiles, and a scratch directory for the CSVs
of property tests."""

import os

# One intra-op thread for torch (and the processes tests start): on a busy 2-core machine two
# threads contend, and a test's time would depend on the load (README, Performance). Set
# before anything imports torch, which reads it once.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
from hypothesis import settings

# CI runs a fixed, derandomized set of examples, so it never flakes; `dev` explores more.
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """A directory for the CSVs that property tests write (one example at a time)."""
    return tmp_path_factory.mktemp("csv")
