"""Phone-state labels: token timing, the state inventory, left-to-right states, the shipped alignment."""

from __future__ import annotations

import numpy as np
import pytest

from fmjax.data import corpus as corpus_lib
from fmjax.data.phone_states import PAUSE, PhoneStates, segments, token_phones


def test_token_phones_reads_the_phone_at_each_token_centre():
    # token u is centred at 0.04 u + 0.02 s (frames 2u, 2u+1 of a 480-sample hop at 24 kHz)
    sr = 1000  # starts counted in ms
    phones = token_phones([30, 70, 100], ["a", "b", "c"], sr, 4)
    # centres 20, 60, 100, 140 ms: before "a", inside "a", at the start of "c", inside "c"
    assert phones == [PAUSE, "a", "c", "c"]
    with pytest.raises(ValueError, match="starts: expected 2 non-decreasing"):
        token_phones([5, 3], ["a", "b"], sr, 2)


def test_segments_are_runs():
    assert segments(list("aabccc")) == [("a", 0, 2), ("b", 2, 3), ("c", 3, 6)]
    assert segments([]) == []


def test_states_follow_mean_duration_and_fill_the_vocabulary():
    seqs = [list("aaaaaaaabb_"), list("aaaaaaaab_")]  # "a" lasts 8.5 tokens on average, "b" 1.5, "_" 1
    inv = PhoneStates.fit(seqs, 12)
    assert inv.phones == ("_", "a", "b") and inv.vocab_size == 12
    states = dict(zip(inv.phones, inv.states))
    assert states["a"] > states["b"] >= states["_"] >= 1
    labels = inv.labels(list("aaaaaaaabb_"))
    a = labels[:8] - inv.offsets[1]
    assert np.all(np.diff(a) >= 0) and a[0] == 0 and a[-1] == states["a"] - 1  # left to right, first to last
    assert set(labels[8:10]) <= set(range(inv.offsets[2], inv.offsets[2] + states["b"]))
    with pytest.raises(ValueError, match="not in the inventory"):
        inv.labels(["z"])
    with pytest.raises(ValueError, match="vocab_size: expected at least one state per phone"):
        PhoneStates.fit(seqs, 2)


def test_shipped_alignment_matches_the_corpus():
    corpus = corpus_lib.load_corpus()
    with np.load(corpus.root / "alignment.npz") as f:
        phones, states, labels = f["phones"], f["states"], f["labels"]
    assert int(states.sum()) == corpus.vocab_size and len(phones) == len(states)
    assert labels.shape == (sum(r["tokens"] for r in corpus.meta["utterances"]),)
    assert 0 <= labels.min() and labels.max() < corpus.vocab_size
