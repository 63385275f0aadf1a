"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the project (or where ``DEEPSTRAIN_DATA`` points).
Tests that need it use the ``shared_data`` fixture, which skips with a clear message when the
folder is absent (a user running the suite elsewhere); on CI it is present and they run.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("DEEPSTRAIN_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not (d / "acdc").is_dir():
        pytest.skip(f"real data folder not found at {d} (set DEEPSTRAIN_DATA)")
    return d
