"""Fixtures of the deploy tests: one real bulkwatch service shared by the tests of this package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy import Exposition, RunningBulkwatch, parse_exposition, start_bulkwatch


@pytest.fixture(scope="package")
def running_bulkwatch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBulkwatch]:
    """A `bulkwatch run` past its first batches (see start_bulkwatch); stopped after the package."""
    service = start_bulkwatch(tmp_path_factory.mktemp("bulkwatch-service"))
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="package")
def bulkwatch_exposition(running_bulkwatch: RunningBulkwatch) -> Exposition:
    """One parsed scrape of the running service."""
    return parse_exposition(running_bulkwatch.metrics_text())
