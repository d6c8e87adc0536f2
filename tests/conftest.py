"""Shared test helpers: fixture loading and precision settings."""

from __future__ import annotations

import os
import pathlib

# XLA's persistent compilation cache, shared by the pytest workers and every subprocess they start (the trainer and
# CLI tests, the notebooks' kernels inherit the environment): the suite compiles the same test-size programs in many
# tests and processes, and on 2 cores compilation is most of its time. Executables are only reused for identical
# programs, so results are unchanged; jit cache sizes (what the tests count as compilations) are per process and
# unaffected. FMJAX_TEST_JAX_CACHE=0 turns it off; JAX_COMPILATION_CACHE_DIR picks another directory.
if os.environ.get("FMJAX_TEST_JAX_CACHE", "1") != "0":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# Parity tolerances in this suite assume true fp32 matmuls (no TF32/bf16 passes on accelerators).
jax.config.update("jax_default_matmul_precision", "highest")
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))


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
