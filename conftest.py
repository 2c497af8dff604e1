"""What both test files share: a scratch directory for the CSVs of property tests."""

import pytest


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """A directory for the CSVs that property tests write (one example at a time)."""
    return tmp_path_factory.mktemp("csv")
