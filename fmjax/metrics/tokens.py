"""Token-level measures: edit distance, token error rate (TER), and how much speaker identity tokens carry.

**TER** of a hypothesis token sequence against a reference is the Levenshtein distance (substitutions, insertions
and deletions, each cost 1) divided by the reference length, as a word error rate is; over a set, the edits add
up and divide by the total reference length. Re-tokenising a generated mel with the corpus tokenizer and scoring
it against the tokens it was generated from measures content: the ground-truth mel scores 0 by construction.

**Speaker identity in tokens** (:func:`speaker_classifier_accuracy`): a multinomial naive-Bayes classifier
(Laplace smoothing ``alpha``) on each utterance's token histogram, leave-one-utterance-out: every utterance is
classified by the counts of all other utterances. Chance is ``1 / speakers``; tokens that spell out the voice
reach 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["edit_distance", "token_error_rate", "speaker_classifier_accuracy"]


def _as_tokens(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"{name}: expected a 1-d integer token sequence, got {a.dtype} of shape {a.shape}")
    return a


def edit_distance(hyp, ref) -> int:
    """Levenshtein distance between two 1-d token sequences (``O(len(hyp) · len(ref))``, one numpy row at a time)."""
    hyp, ref = _as_tokens(hyp, "hyp"), _as_tokens(ref, "ref")
    cols = np.arange(ref.size + 1)
    row = cols.copy()  # distance from the empty hypothesis prefix
    for i, h in enumerate(hyp, 1):
        sub = row[:-1] + (ref != h)  # [len(ref)]: substitute / match
        new = np.concatenate([[i], np.minimum(row[1:] + 1, sub)])  # deletion of h or substitution
        row = np.minimum.accumulate(new - cols) + cols  # insertions of ref tokens: new[j] = min_k new[k] + (j - k)
    return int(row[-1])


def token_error_rate(hyps, refs) -> float:
    """Total edit distance over total reference length of paired sequences (lists, or one pair of arrays)."""
    if isinstance(hyps, np.ndarray) and hyps.ndim == 1:
        hyps, refs = [hyps], [refs]
    if len(hyps) != len(refs) or not len(refs):
        raise ValueError(f"hyps, refs: expected equally many (>= 1) sequences, got {len(hyps)} and {len(refs)}")
    total = sum(_as_tokens(r, "refs").size for r in refs)
    if total == 0:
        raise ValueError("refs: expected at least one reference token, got only empty sequences")
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)) / total


def speaker_classifier_accuracy(token_seqs, speakers, vocab_size: int, alpha: float = 1.0) -> float:
    """Leave-one-out accuracy of a naive-Bayes speaker classifier on token histograms (module docstring).

    Args:
      token_seqs: one 1-d int sequence per utterance, ids in ``[0, vocab_size)``.
      speakers: the utterances' speaker indices ``[n]`` (``0 .. S-1``).
      vocab_size: the number of token ids; alpha: Laplace smoothing (> 0).
    """
    spk = np.asarray(speakers)
    if spk.shape != (len(token_seqs),) or not np.issubdtype(spk.dtype, np.integer) or spk.min() < 0:
        raise ValueError(f"speakers: expected {len(token_seqs)} speaker indices >= 0, got {spk.dtype} {spk.shape}")
    if alpha <= 0:
        raise ValueError(f"alpha: expected a smoothing constant > 0, got {alpha}")
    seqs = [_as_tokens(t, "token_seqs") for t in token_seqs]
    if any(t.size and (t.min() < 0 or t.max() >= vocab_size) for t in seqs):
        raise ValueError(f"token_seqs: expected ids in [0, vocab_size={vocab_size})")
    counts = np.stack([np.bincount(t, minlength=vocab_size) for t in seqs]).astype(np.float64)  # [n, V]
    n_spk = int(spk.max()) + 1
    totals = np.stack([counts[spk == s].sum(axis=0) for s in range(n_spk)])  # [S, V]
    correct = 0
    for i in range(len(seqs)):
        rest = totals.copy()
        rest[spk[i]] -= counts[i]  # leave utterance i out
        log_p = np.log(rest + alpha) - np.log((rest + alpha).sum(axis=1, keepdims=True))  # [S, V]
        correct += int(np.argmax(log_p @ counts[i]) == spk[i])
    return correct / len(seqs)
