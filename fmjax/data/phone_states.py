"""Phone-state labels per 25-Hz token, from phoneme start times: the training targets of the shipped tokenizer.

The speech synthesiser reports where each phoneme starts (``scripts/make_corpus.py`` takes espeak-ng's phoneme
events). :func:`token_phones` turns those into one phone name per token: the phone sounding at the token's
centre, ``"_"`` (pause) before the first phoneme. A token covers mel frames ``2u`` and ``2u + 1``, whose analysis
windows (``n_fft`` samples, after ``(n_fft - hop) / 2`` of reflect padding) are centred at samples
``hop·f + hop/2`` of the signal; so token ``u`` is centred at sample ``2·hop·u + hop``.

:class:`PhoneStates` splits each phone into left-to-right *states*, as an HMM would: a phone of mean duration
``d`` tokens gets ``max(1, round(α·d))`` states, ``α`` chosen so that the states add up to the vocabulary (256),
and the ``j``-th of a segment's ``L`` tokens gets state ``floor(j·n / L)``. Label ``= offset(phone) + state``.
The labels depend on the text and the timing, not on the voice, so a classifier trained to predict them from
speaker-normalised features yields nearly speaker-independent tokens (the measurement is in
``data/corpus/README.md``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PAUSE", "token_phones", "segments", "PhoneStates"]

PAUSE = "_"


def token_phones(starts, phones, sample_rate: int, n_tokens: int, hop: int = 480, mel_rate: int = 24000) -> list[str]:
    """The phone at each token's centre.

    Args:
      starts: phoneme start samples at ``sample_rate`` (non-decreasing), one per entry of ``phones``.
      phones: phoneme names.
      sample_rate: the rate ``starts`` count in (espeak-ng's 22050 Hz).
      n_tokens: the utterance's token count.
      hop, mel_rate: the mel front-end's hop and sample rate (CosyVoice2's 480 at 24 kHz: 25 tokens/s).
    """
    starts = np.asarray(starts, np.float64)
    if starts.shape != (len(phones),) or np.any(np.diff(starts) < 0):
        raise ValueError(f"starts: expected {len(phones)} non-decreasing sample positions, got {starts.shape}")
    centres = (2 * hop * np.arange(n_tokens) + hop) / mel_rate  # [u] seconds
    k = np.searchsorted(starts / sample_rate, centres, side="right") - 1  # the phoneme sounding then
    return [PAUSE if i < 0 else phones[i] for i in k]


def segments(phones_per_token) -> list[tuple[str, int, int]]:
    """Runs of equal phone names as ``(phone, first, end)`` (``end`` exclusive)."""
    out, first = [], 0
    for u in range(1, len(phones_per_token) + 1):
        if u == len(phones_per_token) or phones_per_token[u] != phones_per_token[first]:
            out.append((phones_per_token[first], first, u))
            first = u
    return out


@dataclasses.dataclass(frozen=True)
class PhoneStates:
    """A phone-state inventory: ``phones`` (sorted names) and ``states`` (how many each), labels
    ``offset[p] + state`` with ``offset`` the running sum of ``states``."""

    phones: tuple[str, ...]
    states: tuple[int, ...]

    @property
    def vocab_size(self) -> int:
        return int(sum(self.states))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.states)[:-1]]).astype(np.int64)

    @classmethod
    def fit(cls, sequences, vocab_size: int) -> "PhoneStates":
        """States in proportion to each phone's mean segment length over ``sequences`` (lists of per-token phone
        names), exactly ``vocab_size`` in all (see the module docstring)."""
        lengths: dict[str, list[int]] = {}
        for seq in sequences:
            for phone, a, b in segments(seq):
                lengths.setdefault(phone, []).append(b - a)
        if not lengths:
            raise ValueError("sequences: expected at least one token, got none")
        phones = tuple(sorted(lengths))
        if vocab_size < len(phones):
            raise ValueError(f"vocab_size: expected at least one state per phone ({len(phones)}), got {vocab_size}")
        mean = np.array([np.mean(lengths[p]) for p in phones])
        lo, hi = 0.0, float(vocab_size)
        for _ in range(100):  # bisection on alpha: sum(max(1, round(alpha * mean))) is non-decreasing in alpha
            alpha = (lo + hi) / 2
            n = np.maximum(1, np.round(alpha * mean)).astype(int)
            lo, hi = (alpha, hi) if n.sum() < vocab_size else (lo, alpha)
        n = np.maximum(1, np.round(lo * mean)).astype(int)
        while n.sum() < vocab_size:  # rounding ties: give the rest to the phones with the longest states
            n[int(np.argmax(mean / n))] += 1
        return cls(phones, tuple(int(s) for s in n))

    def labels(self, phones_per_token) -> np.ndarray:
        """int32 ``[u]`` phone-state labels of one utterance's per-token phone names."""
        index = {p: i for i, p in enumerate(self.phones)}
        out = np.zeros(len(phones_per_token), np.int32)
        offsets = self.offsets
        for phone, a, b in segments(phones_per_token):
            if phone not in index:
                raise ValueError(f"phones_per_token: phone {phone!r} is not in the inventory {self.phones}")
            i = index[phone]
            out[a:b] = offsets[i] + np.minimum(np.arange(b - a) * self.states[i] // (b - a), self.states[i] - 1)
        return out
