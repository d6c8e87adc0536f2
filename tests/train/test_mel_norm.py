"""``model.mel_norm`` of the token2mel experiment: the statistics come from the training split (computed here
independently in numpy), the loss sees normalised mels, generated mels come back in the corpus's units, and a bad
setting names the key."""

from __future__ import annotations

import numpy as np
import pytest

from fmjax.data.corpus import load_corpus
from tests.train.corpus_helpers import micro_corpus
from train.config import apply_overrides
from train.configs import token2mel
from train.corpus_experiment import mel_statistics
from train.experiments import build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(micro_corpus(tmp_path_factory.mktemp("corpus")))


@pytest.mark.parametrize("kind", ["global", "per_bin"])
def test_statistics_are_the_training_frames_moments(corpus, kind):
    train = load_corpus(corpus).train
    frames = np.concatenate([u.mel for u in train]).astype(np.float64)
    mean, std = mel_statistics(train, kind)
    if kind == "global":
        want_mean, want_std = np.full(80, frames.mean()), np.full(80, frames.std())
    else:
        want_mean, want_std = frames.mean(0), frames.std(0)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-6)  # float32 rounding of float64 moments
    np.testing.assert_allclose(std, want_std, rtol=1e-6, atol=1e-6)
    assert mel_statistics(train, "none") is None


def test_normalise_round_trip_and_loss_sees_normalised_mels(corpus, monkeypatch):
    cfg = apply_overrides(token2mel.get_config("tiny"), [f"data.corpus={corpus}", "data.buckets=(24,)", "train.batch_size=4",
                                                        "data.eval_sentences=2", "model.mel_norm=per_bin"])
    exp = build(cfg)
    u = exp.corpus.valid[0]
    z = exp.normalize_mel(u.mel)
    # normalised training frames are ~zero-mean unit-variance; the inverse gives the corpus's units back (1e-5:
    # float32 (x - m) / s * s + m on log-mels of magnitude < 20)
    train = np.concatenate([exp.normalize_mel(v.mel) for v in exp.corpus.train])
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-3
    back = exp.denormalize_mel(z[None], np.array([z.shape[0]]))[0]
    np.testing.assert_allclose(back, u.mel, atol=1e-5)
    # masked frames are zero after normalisation and after de-normalisation
    mask = np.ones(z.shape[0], np.float32)
    mask[-3:] = 0
    assert np.all(exp.normalize_mel(u.mel, mask)[-3:] == 0)
    assert np.all(exp.denormalize_mel(z[None], np.array([z.shape[0] - 3]))[0, -3:] == 0)
    assert not np.allclose(z, u.mel)
    # the loss is given the normalised mels (flow_loss intercepted: what it receives is what the flow learns)
    import train.experiments.token2mel as t2m_module

    seen = {}

    def spy(model, params, batch, key, **kw):
        seen["mel"] = np.asarray(batch["mel"])
        raise StopIteration

    monkeypatch.setattr(t2m_module, "flow_loss", spy)
    batch, _ = next(iter(exp.train_batches(0, 0)))
    with pytest.raises(StopIteration):
        exp.loss_fn(None, batch, None)
    valid = np.asarray(batch["mel_mask"]) > 0
    np.testing.assert_allclose(seen["mel"][valid], exp.normalize_mel(np.asarray(batch["mel"]))[valid], atol=1e-6)


def test_bad_mel_norm_names_the_key():
    with pytest.raises(ValueError, match="model.mel_norm"):
        apply_overrides(token2mel.get_config("tiny"), ["model.mel_norm=zscore"])
    with pytest.raises(ValueError, match="model.mel_norm"):
        mel_statistics([], "zscore")


def test_bad_prior_weight_names_the_key():
    for bad in ("-0.5", "true"):
        with pytest.raises(ValueError, match="model.prior_weight"):
            apply_overrides(token2mel.get_config("tiny"), [f"model.prior_weight={bad}"])
    assert apply_overrides(token2mel.get_config("tiny"), ["model.prior_weight=0.5"]).model.prior_weight == 0.5
