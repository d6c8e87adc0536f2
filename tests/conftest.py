"""Shared test helpers: fixture loading and precision settings."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# Parity tolerances in this suite assume true fp32 matmuls (no TF32/bf16 passes on accelerators).
jax.config.update("jax_default_matmul_precision", "highest")


def load_fixture(name: str) -> dict[str, np.ndarray]:
    """Loads ``tests/fixtures/<name>`` (an .npz copied from ../shared/reference) as a plain dict."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"fixture {path} is missing; copy it from ../shared/reference (see tests/fixtures/README.md)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture
def fixture():
    return load_fixture
