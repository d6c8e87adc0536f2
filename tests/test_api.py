"""The top-level namespace: the core is re-exported, submodules load lazily, ``import fmjax`` stays light."""

import subprocess
import sys

import pytest

import fmjax


def test_all_names_resolve():
    missing = [name for name in fmjax.__all__ if not hasattr(fmjax, name)]
    assert missing == []


def test_submodules_load_on_access():
    assert fmjax.token2wav.Token2Wav.__module__ == "fmjax.pipelines.token2wav"  # the historical name re-exports it
    assert fmjax.pipelines.token2wav.Token2Wav is fmjax.token2wav.Token2Wav
    assert "token2wav" in dir(fmjax)
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        fmjax.not_a_module  # noqa: B018


def test_import_does_not_load_flax_models():
    code = "import sys, fmjax; print(sorted(m for m in ('flax', 'fmjax.models', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
