"""Deterministic, resumable, length-bucketed batches of corpus utterances with a few static shapes.

Every utterance goes to the smallest bucket whose token length holds it; a batch is padded to its bucket's
length, so the trainer compiles at most ``len(buckets)`` shapes. Utterances longer than the largest bucket are
dropped with one logged warning.

The order is a pure function of ``(seed, position)``: batch number ``position`` belongs to epoch
``position // batches_per_epoch``; each epoch shuffles the utterances with a stable integer hash of
``(seed, epoch, index)``, cuts each bucket's members into full batches (the leftover ``n_b mod batch_size`` of a
bucket sit out that epoch), and shuffles the batches with the same hash. The integer ``position`` is the whole
iterator state: checkpoint it, and :meth:`BucketedBatches.iterate` resumes exactly from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Batch", "BucketedBatches", "default_buckets", "collate"]

log = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(*parts) -> np.ndarray:
    """splitmix64-style hash of integer arrays (broadcast): the same on every platform and numpy version."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for p in parts:
            z = (h + np.asarray(p, np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
            h = z ^ (z >> np.uint64(31))
    return h


class Batch(NamedTuple):
    """A padded batch (numpy). ``T`` is the bucket's frame length, ``U = T // 2`` its token length.

    Attributes:
      mel: float32 ``[B, T, m]``, zero past each row's length.
      mel_mask: float32 ``[B, T]``, 1 at valid frames.
      mel_len: int32 ``[B]``.
      tokens: int32 ``[B, U]``, zero past each row's length.
      token_mask: float32 ``[B, U]``.
      token_len: int32 ``[B]`` (``mel_len == 2 * token_len``).
      spk: float32 ``[B, s]`` speaker embeddings.
      speaker: int32 ``[B]`` speaker indices.
      index: int32 ``[B]`` positions in the utterance sequence the batches were built from (-1 for filler rows).
      row_mask: float32 ``[B]``, 0 for filler rows (only :meth:`BucketedBatches.once` makes those).
    """

    mel: np.ndarray
    mel_mask: np.ndarray
    mel_len: np.ndarray
    tokens: np.ndarray
    token_mask: np.ndarray
    token_len: np.ndarray
    spk: np.ndarray
    speaker: np.ndarray
    index: np.ndarray
    row_mask: np.ndarray


def collate(utterances: Sequence, indices: Sequence[int], token_length: int, batch_size: int | None = None) -> Batch:
    """Pads ``utterances[i] for i in indices`` to ``token_length`` tokens (``2 * token_length`` frames); with
    ``batch_size`` larger than ``len(indices)``, appends filler rows of length 0 (``row_mask`` 0, ``index`` -1)."""
    rows = len(indices) if batch_size is None else batch_size
    if rows < len(indices):
        raise ValueError(f"batch_size: expected >= {len(indices)} rows, got {batch_size}")
    first = utterances[indices[0]]
    m, s = first.mel.shape[1], first.spk.shape[0]
    frames = 2 * token_length
    out = Batch(
        mel=np.zeros((rows, frames, m), np.float32),
        mel_mask=np.zeros((rows, frames), np.float32),
        mel_len=np.zeros((rows,), np.int32),
        tokens=np.zeros((rows, token_length), np.int32),
        token_mask=np.zeros((rows, token_length), np.float32),
        token_len=np.zeros((rows,), np.int32),
        spk=np.zeros((rows, s), np.float32),
        speaker=np.zeros((rows,), np.int32),
        index=np.full((rows,), -1, np.int32),
        row_mask=np.zeros((rows,), np.float32),
    )
    for r, i in enumerate(indices):
        u = utterances[i]
        nt = u.tokens.shape[0]
        if nt > token_length:
            raise ValueError(f"token_length: utterance {u.id!r} has {nt} tokens, more than {token_length}")
        out.mel[r, : 2 * nt] = u.mel
        out.mel_mask[r, : 2 * nt] = 1.0
        out.tokens[r, :nt] = u.tokens
        out.token_mask[r, :nt] = 1.0
        out.mel_len[r], out.token_len[r] = 2 * nt, nt
        out.spk[r], out.speaker[r], out.index[r], out.row_mask[r] = u.spk, u.speaker_index, i, 1.0
    return out


def default_buckets(token_lengths: Sequence[int], n_buckets: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """Up to ``n_buckets`` token lengths at evenly spaced quantiles of the data (the last one covers the longest
    utterance), rounded up to a multiple of ``multiple``."""
    lengths = np.asarray(token_lengths)
    if lengths.size == 0:
        raise ValueError("token_lengths: expected at least one utterance, got none")
    qs = np.quantile(lengths, np.arange(1, n_buckets + 1) / n_buckets, method="higher")
    return tuple(sorted({int(-(-q // multiple) * multiple) for q in qs}))


class BucketedBatches:
    """Endless, seeded, resumable training batches over ``utterances`` (each with ``.mel``, ``.tokens``, ``.spk``,
    ``.speaker_index``, ``.id``): ``batches[position]`` or ``batches.iterate(start=position)``.

    Args:
      utterances: the sequence to draw from (e.g. ``corpus.train``).
      batch_size: rows per batch (every batch is full).
      buckets: increasing token lengths (frames = 2 x tokens); None for :func:`default_buckets`.
      seed: the data-order seed.
    """

    def __init__(self, utterances: Sequence, batch_size: int, buckets: Sequence[int] | None = None, seed: int = 0):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
        self.utterances = tuple(utterances)
        lengths = np.array([u.tokens.shape[0] for u in self.utterances], np.int64)
        if buckets is None:
            buckets = default_buckets(lengths)
        buckets = tuple(int(b) for b in buckets)
        if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets: expected strictly increasing positive token lengths, got {buckets}")
        self.batch_size, self.buckets, self.seed = batch_size, buckets, int(seed)
        self._bucket_of = np.searchsorted(np.asarray(buckets), lengths, side="left")  # [n]; len(buckets) = too long
        too_long = np.flatnonzero(self._bucket_of == len(buckets))
        if too_long.size:
            log.warning("dropping %d utterances longer than the largest bucket (%d tokens), e.g. %r",
                        too_long.size, buckets[-1], self.utterances[too_long[0]].id)
        counts = np.bincount(self._bucket_of, minlength=len(buckets) + 1)[: len(buckets)]
        self.batches_per_bucket = tuple(int(c) // batch_size for c in counts)
        self.batches_per_epoch = sum(self.batches_per_bucket)
        self._cached = None
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch_size: no bucket has {batch_size} utterances (bucket sizes {counts.tolist()} for token "
                f"lengths {buckets}); use a smaller batch size or fewer buckets"
            )

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """The static ``(batch, frames)`` shapes the batches come in (buckets that fill at least one batch)."""
        return tuple((self.batch_size, 2 * b) for b, n in zip(self.buckets, self.batches_per_bucket) if n)

    def _epoch(self, epoch: int) -> tuple[tuple[int, np.ndarray], ...]:
        """The epoch's batches as ``(bucket, utterance indices)``; the latest epoch is kept."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        n = len(self.utterances)
        order = np.argsort(_mix64(self.seed, epoch, np.arange(n)), kind="stable")
        plan = []
        for b in range(len(self.buckets)):
            members = order[self._bucket_of[order] == b]
            for j in range(self.batches_per_bucket[b]):
                plan.append((b, members[j * self.batch_size : (j + 1) * self.batch_size]))
        shuffle = np.argsort(_mix64(self.seed, epoch, 1 << 40, np.arange(len(plan))), kind="stable")
        self._cached = (epoch, tuple(plan[i] for i in shuffle))
        return self._cached[1]

    def __getitem__(self, position: int) -> Batch:
        if not isinstance(position, (int, np.integer)) or position < 0:
            raise ValueError(f"position: expected an int >= 0, got {position!r}")
        epoch, j = divmod(int(position), self.batches_per_epoch)
        bucket, indices = self._epoch(epoch)[j]
        return collate(self.utterances, indices, self.buckets[bucket])

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` forever; after consuming ``k`` of them, resume with ``start + k``."""
        position = start
        while True:
            yield self[position]
            position += 1

    def once(self) -> Iterator[Batch]:
        """Every utterance exactly once, in index order grouped by bucket, each batch padded with filler rows
        (``row_mask`` 0) to ``batch_size``; utterances longer than the largest bucket use their own length rounded
        up to a multiple of 8 tokens. For validation."""
        lengths = [u.tokens.shape[0] for u in self.utterances]
        for b in range(len(self.buckets) + 1):
            members = np.flatnonzero(self._bucket_of == b)
            for k in range(0, members.size, self.batch_size):
                idx = members[k : k + self.batch_size]
                length = self.buckets[b] if b < len(self.buckets) else -(-max(lengths[i] for i in idx) // 8) * 8
                yield collate(self.utterances, idx, length, self.batch_size)
