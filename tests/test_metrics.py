"""Mel L1 and mel-cepstral distortion on cases with known answers."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.fft

from fmjax.metrics import MCD_SCALE, dct_basis, mel_cepstral_distortion, mel_cepstrum, mel_l1


def _mels(seed=0, b=3, t=12, m=80):
    rng = np.random.default_rng(seed)
    return (rng.normal(-4.0, 2.0, (b, t, m)).astype(np.float32), rng.normal(-4.0, 2.0, (b, t, m)).astype(np.float32))


def test_dct_basis_is_scipys_orthonormal_dct():
    x = np.random.default_rng(0).normal(size=(5, 80))
    np.testing.assert_allclose(np.asarray(mel_cepstrum(x)), scipy.fft.dct(x, type=2, norm="ortho", axis=-1),
                               rtol=0, atol=1e-4)
    d = dct_basis(80).astype(np.float64)
    np.testing.assert_allclose(d @ d.T, np.eye(80), rtol=0, atol=1e-6)


def test_identical_mels_score_zero():
    a, _ = _mels()
    np.testing.assert_array_equal(np.asarray(mel_l1(a, a)), 0.0)
    assert np.abs(np.asarray(mel_cepstral_distortion(a, a, include_c0=True))).max() < 1e-5


def test_constant_offset_known_values():
    a, _ = _mels()
    delta = 0.75
    np.testing.assert_allclose(np.asarray(mel_l1(a + delta, a)), delta, rtol=0, atol=1e-5)
    # Only c0 moves (by delta * sqrt(m)): 0 dB without c0, (10 / ln 10) * sqrt(2 m) * delta with it.
    assert np.abs(np.asarray(mel_cepstral_distortion(a + delta, a))).max() < 1e-4
    expected = MCD_SCALE * math.sqrt(2 * 80) * delta
    np.testing.assert_allclose(np.asarray(mel_cepstral_distortion(a + delta, a, include_c0=True)), expected,
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("k,counted", [(3, True), (24, True), (25, False)])
def test_one_basis_vector_moves_one_coefficient(k, counted):
    a, _ = _mels()
    amp = 0.4
    b = a + amp * dct_basis(80)[k]
    mcd = np.asarray(mel_cepstral_distortion(b, a, n_cepstra=24))
    expected = MCD_SCALE * math.sqrt(2.0) * amp if counted else 0.0  # c_25 is outside c_1..c_24
    np.testing.assert_allclose(mcd, expected, rtol=0, atol=1e-4)


def test_symmetric():
    a, b = _mels(1)
    np.testing.assert_allclose(np.asarray(mel_l1(a, b)), np.asarray(mel_l1(b, a)), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(mel_cepstral_distortion(a, b)), np.asarray(mel_cepstral_distortion(b, a)),
                               rtol=0, atol=1e-6)


def test_masks_respected():
    a, b = _mels(2, b=2, t=10)
    mask = np.zeros((2, 10), np.float32)
    mask[0, :4] = 1  # row 0: 4 valid frames; row 1: none
    garbage = b.copy()
    garbage[0, 4:6] = 1e6  # padded frames may hold anything
    garbage[0, 6:] = np.nan
    garbage[1] = np.nan
    l1 = np.asarray(mel_l1(a, garbage, mask))
    mcd = np.asarray(mel_cepstral_distortion(a, garbage, mask))
    np.testing.assert_allclose(l1[0], np.abs(a[0, :4] - b[0, :4]).mean(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(mcd[0], np.asarray(mel_cepstral_distortion(a[:1, :4], b[:1, :4]))[0], rtol=1e-5, atol=0)
    assert l1[1] == 0.0 and mcd[1] == 0.0  # no valid frame -> 0


def test_per_frame_average_and_jit():
    a, b = _mels(3, b=1, t=2)
    mask = np.ones((1, 2), np.float32)
    per_frame = [MCD_SCALE * np.sqrt(2 * np.sum(scipy.fft.dct(a[0, f] - b[0, f], norm="ortho")[1:25] ** 2))
                 for f in range(2)]
    got = float(jax.jit(mel_cepstral_distortion)(a, b, mask)[0])
    np.testing.assert_allclose(got, np.mean(per_frame), rtol=1e-5, atol=0)


@pytest.mark.parametrize("call,err,match", [
    (lambda a: mel_l1(a[0], a[0]), ValueError, r"pred: expected a log-mel of shape \[b, t, m\]"),
    (lambda a: mel_l1(a, a[:, :5]), ValueError, r"target: expected the shape of pred \(3, 12, 80\)"),
    (lambda a: mel_l1(a, a, np.ones((3, 5))), ValueError, r"mask: expected shape \(3, 12\)"),
    (lambda a: mel_l1(a.astype(np.int32), a), TypeError, "pred: expected a floating dtype"),
    (lambda a: mel_cepstral_distortion(a, a, n_cepstra=80), ValueError, r"n_cepstra: expected an int in \[1, 79\]"),
])
def test_bad_input_raises(call, err, match):
    with pytest.raises(err, match=match):
        call(_mels()[0])
