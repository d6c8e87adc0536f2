"""One entry point for evaluating generated mels of corpus utterances: :class:`SpeechScorer`.

Built once per corpus (a second or so), it scores a batch of generated mels ``[k, F, m]`` of ``k`` corpus
utterances (frames aligned with their ground truth) and returns every metric, and it computes the same metrics
for the ground truth (the ceiling) and the two baselines of :mod:`fmjax.metrics.baselines`:

==============  =====================================================================================  ==========
key             what                                                                                   better
==============  =====================================================================================  ==========
``mel_l1``      mean over utterances of the masked mel L1 (:func:`fmjax.metrics.mel_l1`)              lower
``mcd``         mean mel-cepstral distortion, dB (:func:`fmjax.metrics.mel_cepstral_distortion`)      lower
``ter``         token error rate of the mel re-tokenised with the corpus tokenizer under the target   lower
                speaker's statistics, against the utterance's tokens (:mod:`fmjax.metrics.tokens`)
``spk_acc``     fraction of utterances whose speaker embedding (the corpus recipe on the generated    higher
                frames) has the highest cosine similarity with the target speaker's embedding
``spk_cos``     mean cosine similarity between that embedding and the target speaker's                higher
``fd``          Fréchet distance of the set's frame statistics (mel + deltas) to the training set's   lower
                (:mod:`fmjax.metrics.realism`)
``vuv_error``   voicing disagreement with the ground truth, per frame (:mod:`fmjax.metrics.pitch`)    lower
``f0_rmse``     F0 RMSE in cents over frames voiced in both                                           lower
==============  =====================================================================================  ==========

A corpus without ``tokenizer.npz`` gets no ``ter`` (logged once); a tokenizer whose speaker table lacks some of
the corpus's speakers gets their statistics from the corpus's training frames (as ``fmjax.data.prepare`` does).

The ground truth scores ``mel_l1 = mcd = ter = vuv_error = f0_rmse = 0`` by construction (its tokens were made
from exactly the stored mel, by the same host-side float64 code); its ``spk_acc``, ``spk_cos`` and ``fd`` are the
ceilings a perfect generator reaches on the same utterances.
"""

from __future__ import annotations

import logging

import numpy as np

from fmjax.data.speaker_embedding import SpeakerEmbedder
from fmjax.data.tokenizer import speaker_statistics
from fmjax.metrics.baselines import LookupDecoder, speaker_means
from fmjax.metrics.distances import mel_cepstral_distortion, mel_l1
from fmjax.metrics.pitch import f0_agreement
from fmjax.metrics.realism import FrameStats, frechet_distance
from fmjax.metrics.tokens import token_error_rate

__all__ = ["SpeechScorer", "METRICS", "BASELINES"]

METRICS = ("mel_l1", "mcd", "ter", "spk_acc", "spk_cos", "fd", "vuv_error", "f0_rmse")
BASELINES = ("speaker_mean", "lookup")

log = logging.getLogger(__name__)


class SpeechScorer:
    """Scores generated mels of corpus utterances (module docstring).

    Args:
      corpus: a loaded :class:`fmjax.data.corpus.Corpus`; its training split defines the baselines, the speaker
        embedding reference and the realism reference.
    """

    def __init__(self, corpus):
        if not corpus.train:
            raise ValueError("corpus: expected a training split to build the baselines from, got none")
        self.corpus = corpus
        self.tokenizer = _tokenizer(corpus)
        n_spk = len(corpus.speakers)
        self.speaker_means = speaker_means(corpus.train, n_spk)  # [S, m]
        self.lookup = LookupDecoder.fit(corpus.train, n_spk, corpus.vocab_size)
        self.embedder = SpeakerEmbedder.from_frames([u.mel for u in corpus.train])
        emb = np.asarray(corpus.spk_embeddings, np.float64)
        self._spk_unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # [S, 192]
        self.reference = FrameStats.of([u.mel for u in corpus.train])
        self._cache: dict = {}

    # ------------------------------------------------------------------------------------------ predictions
    def ground_truth(self, utterances) -> tuple[np.ndarray, np.ndarray]:
        """``(mel [k, F, m], lengths [k])`` of the utterances' stored mels, zero-padded."""
        return _stack([u.mel for u in utterances])

    def baseline(self, name: str, utterances) -> tuple[np.ndarray, np.ndarray]:
        """``(mel [k, F, m], lengths [k])`` of a baseline (``"speaker_mean"`` or ``"lookup"``)."""
        if name == "speaker_mean":
            return _stack([np.repeat(self.speaker_means[u.speaker_index][None], u.frames, axis=0) for u in utterances])
        if name == "lookup":
            return _stack([self.lookup.decode(u.tokens, u.speaker_index) for u in utterances])
        raise ValueError(f"name: expected one of {BASELINES}, got {name!r}")

    # ------------------------------------------------------------------------------------------------ scores
    def score(self, mel, lengths, utterances) -> dict[str, float]:
        """Every metric of generated mels ``[k, F, m]`` (valid frames ``lengths [k]``, each equal to its
        utterance's frame count) of ``utterances`` (``k`` corpus :class:`~fmjax.data.corpus.Utterance`)."""
        rows = self._rows(mel, lengths, utterances)
        truth = [u.mel for u in utterances]
        pred, tgt, mask = _padded(rows), _padded(truth), _padded([np.ones(len(r), np.float32) for r in rows])
        out = {"mel_l1": float(np.mean(np.asarray(mel_l1(pred, tgt, mask)))),
               "mcd": float(np.mean(np.asarray(mel_cepstral_distortion(pred, tgt, mask))))}
        if self.tokenizer is not None:
            hyps = [self.tokenizer.encode(r, self.corpus.speakers[u.speaker_index]) for r, u in zip(rows, utterances)]
            out["ter"] = token_error_rate(hyps, [u.tokens for u in utterances])
        emb = np.stack([self.embedder.embed(r) for r in rows]).astype(np.float64)  # [k, 192]
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        cos = emb @ self._spk_unit.T  # [k, S]
        target = np.array([u.speaker_index for u in utterances])
        out["spk_acc"] = float(np.mean(np.argmax(cos, axis=1) == target))
        out["spk_cos"] = float(np.mean(cos[np.arange(len(rows)), target]))
        out["fd"] = frechet_distance(FrameStats.of(rows), self.reference)
        f0 = f0_agreement(rows, truth, self.corpus.config)
        out["vuv_error"], out["f0_rmse"] = f0["vuv_error"], f0["f0_rmse_cents"]
        return out

    def reference_scores(self, utterances) -> dict[str, dict[str, float]]:
        """``{"ground_truth": ..., "speaker_mean": ..., "lookup": ...}``: :meth:`score` of the ceiling and the
        baselines on these utterances (cached by their ids: they do not change during training)."""
        key = tuple(u.id for u in utterances)
        if key not in self._cache:
            self._cache[key] = {"ground_truth": self.score(*self.ground_truth(utterances), utterances),
                                **{b: self.score(*self.baseline(b, utterances), utterances) for b in BASELINES}}
        return self._cache[key]

    def report(self, mel, lengths, utterances) -> dict[str, dict[str, float]]:
        """:meth:`reference_scores` plus ``"model"``: the generated mels' scores."""
        return {"model": self.score(mel, lengths, utterances), **self.reference_scores(utterances)}

    # ----------------------------------------------------------------------------------------------- checks
    def _rows(self, mel, lengths, utterances) -> list[np.ndarray]:
        mel = np.asarray(mel)
        m = self.corpus.config.n_mels
        if mel.ndim != 3 or mel.shape[2] != m:
            raise ValueError(f"mel: expected generated log-mels of shape [k, F, {m}], got {mel.shape}")
        if not np.issubdtype(mel.dtype, np.floating):
            raise TypeError(f"mel: expected a floating dtype, got {mel.dtype}")
        k = mel.shape[0]
        lengths = np.asarray(lengths)
        if lengths.shape != (k,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths: expected {k} integer frame counts (one per row of mel), got "
                             f"{lengths.dtype} {lengths.shape}")
        utterances = list(utterances)
        if len(utterances) != k or k == 0:
            raise ValueError(f"utterances: expected {k} (>= 1) corpus utterances, one per row of mel, got "
                             f"{len(utterances)}")
        rows = []
        for i, (n, u) in enumerate(zip(lengths, utterances)):
            if n != u.frames or n > mel.shape[1]:
                raise ValueError(f"lengths: row {i} has {n} frames, expected its utterance {u.id!r}'s {u.frames} "
                                 f"(at most F = {mel.shape[1]}; frames must align with the ground truth)")
            row = mel[i, :n].astype(np.float32)
            if not np.all(np.isfinite(row)):
                raise ValueError(f"mel: row {i} ({u.id!r}) has non-finite values in its {n} valid frames")
            rows.append(row)
        return rows


def _tokenizer(corpus):
    """The corpus's tokenizer with every corpus speaker in its table, or None without a tokenizer file."""
    if not corpus.tokenizer_path.is_file():
        log.warning("corpus %s has no tokenizer.npz: the token error rate is not computed", corpus.root)
        return None
    tok = corpus.tokenizer()
    missing = sorted(set(corpus.speakers) - set(tok.speakers))
    if missing:
        log.warning("tokenizer lacks the statistics of speakers %s: computed from the corpus's training frames",
                    missing)
        by_spk: dict = {}
        for u in corpus.train:
            by_spk.setdefault(u.speaker, []).append(u.mel)
        names, mean, std = speaker_statistics(by_spk, tok.n_cepstra)
        keep = [i for i, s in enumerate(tok.speakers) if s not in names]
        tok = tok.with_speakers([tok.speakers[i] for i in keep] + list(names),
                                np.concatenate([tok.speaker_mean[keep], mean]),
                                np.concatenate([tok.speaker_std[keep], std]))
    return tok


def _padded(arrays) -> np.ndarray:
    width = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), width) + arrays[0].shape[1:], np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


def _stack(mels) -> tuple[np.ndarray, np.ndarray]:
    return _padded(mels), np.array([x.shape[0] for x in mels], np.int32)
