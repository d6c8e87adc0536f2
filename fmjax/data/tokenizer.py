"""A k-means speech tokenizer over log-mel frames: 50-Hz mel frames in, 25-Hz discrete tokens out.

Each token summarises two consecutive mel frames: the pair is flattened to ``2·m`` features, standardised with
per-feature mean/std fitted on the training frames, and assigned to the nearest of ``K`` centroids (squared
Euclidean distance; ties go to the lowest index). An odd last frame is dropped, so ``frames == 2·tokens`` after
trimming the mel to ``2 * (frames // 2)`` frames, as CosyVoice's dataset does.

The centroids are fitted with Lloyd's algorithm from a k-means++ initialisation drawn from a PRNG key; both
are jitted, with the iteration count static and the objective recorded at every iteration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Float, Int, Key

__all__ = ["SpeechTokenizer", "kmeans_plus_plus", "lloyd", "fit_kmeans", "pair_frames"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _sq_distances(x: Float[Array, "n d"], c: Float[Array, "k d"]) -> Float[Array, "n k"]:
    """``||x_i - c_j||²`` via the expansion, clamped at 0 against rounding."""
    xc = jnp.matmul(x, c.T, precision=_HIGHEST)  # [n, k]
    d = jnp.sum(x * x, axis=-1)[:, None] - 2.0 * xc + jnp.sum(c * c, axis=-1)[None, :]
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(x: Float[Array, "n d"], k: int, key: Key) -> Float[Array, "k d"]:
    """k-means++ seeding: the first centre uniformly, each next one with probability ∝ squared distance to the
    nearest centre chosen so far. Deterministic given ``key``."""
    n = x.shape[0]
    key_first, key_rest = jax.random.split(key)
    first = jax.random.randint(key_first, (), 0, n)
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])  # [k, d]
    nearest = _sq_distances(x, x[first][None])[:, 0]  # [n]

    def pick(i, carry):
        centres, nearest = carry
        logits = jnp.where(nearest > 0, jnp.log(jnp.where(nearest > 0, nearest, 1.0)), -jnp.inf)
        idx = jax.random.categorical(jax.random.fold_in(key_rest, i), logits)
        centres = centres.at[i].set(x[idx])
        nearest = jnp.minimum(nearest, _sq_distances(x, x[idx][None])[:, 0])
        return centres, nearest

    centres, _ = jax.lax.fori_loop(1, k, pick, (centres, nearest))
    return centres


@functools.partial(jax.jit, static_argnames=("n_iter",))
def lloyd(x: Float[Array, "n d"], centres: Float[Array, "k d"], n_iter: int):
    """``n_iter`` Lloyd iterations (assign to the nearest centre, move each centre to its members' mean; a
    centre with no members stays put, so the objective never increases).

    Returns:
      ``(centres [k, d], objective [n_iter + 1])``: the mean squared distance to the nearest centre before the
      first and after each iteration.
    """
    k = centres.shape[0]

    def objective(c):
        return jnp.mean(jnp.min(_sq_distances(x, c), axis=-1))

    def step(c, _):
        assign = jnp.argmin(_sq_distances(x, c), axis=-1)  # [n]
        sums = jax.ops.segment_sum(x, assign, num_segments=k)  # [k, d]
        counts = jax.ops.segment_sum(jnp.ones_like(assign, x.dtype), assign, num_segments=k)  # [k]
        c = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)
        return c, objective(c)

    start = objective(centres)
    centres, history = jax.lax.scan(step, centres, None, length=n_iter)
    return centres, jnp.concatenate([start[None], history])


def fit_kmeans(x: Float[Array, "n d"], k: int, key: Key, n_iter: int = 50):
    """k-means++ seeding then ``n_iter`` Lloyd iterations. Returns ``(centres [k, d], objective [n_iter + 1])``."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x: expected points of shape [n, d], got shape {x.shape}")
    if not (isinstance(k, int) and 1 <= k <= x.shape[0]):
        raise ValueError(f"k: expected an int in [1, n={x.shape[0]}], got {k!r}")
    if not (isinstance(n_iter, int) and n_iter >= 0):
        raise ValueError(f"n_iter: expected an int >= 0, got {n_iter!r}")
    return lloyd(x, kmeans_plus_plus(x, k, key), n_iter)


def pair_frames(mel: Float[Array, "*b t m"]) -> Float[Array, "*b u d"]:
    """Drops an odd last frame and joins frames ``2u, 2u + 1`` into one ``2m`` vector per token.

    ``[..., t, m] -> [..., t // 2, 2m]``.
    """
    t, m = mel.shape[-2], mel.shape[-1]
    mel = mel[..., : 2 * (t // 2), :]
    return mel.reshape(*mel.shape[:-2], t // 2, 2 * m)  # [..., t // 2, 2m]


@jax.jit
def _encode(mel, centroids, mean, std):
    feats = (pair_frames(mel) - mean) / std  # [..., u, 2m]
    flat = feats.reshape(-1, feats.shape[-1])  # [n, 2m]
    tokens = jnp.argmin(_sq_distances(flat, centroids), axis=-1).astype(jnp.int32)  # [n]
    return tokens.reshape(feats.shape[:-1])  # [..., u]


_FORMAT = "fmjax-kmeans-speech-tokenizer"


@dataclasses.dataclass(frozen=True, eq=False)
class SpeechTokenizer:
    """Nearest-centroid tokenizer over pairs of mel frames (25 tokens/s at 50 frames/s).

    Attributes:
      centroids: float32 ``[K, 2m]`` in standardised feature space.
      mean, std: float32 ``[2m]`` feature standardisation fitted on the training frames.
    """

    centroids: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        c = np.asarray(self.centroids)
        if c.ndim != 2 or c.shape[1] % 2:
            raise ValueError(f"centroids: expected shape [K, 2m], got {c.shape}")
        for name in ("mean", "std"):
            if np.shape(getattr(self, name)) != (c.shape[1],):
                raise ValueError(f"{name}: expected shape ({c.shape[1]},), got {np.shape(getattr(self, name))}")
        if not np.all(np.asarray(self.std) > 0):
            raise ValueError("std: expected every entry > 0")

    @property
    def vocab_size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_mels(self) -> int:
        return int(self.centroids.shape[1] // 2)

    def encode(self, mel: Float[Array, "*b t m"]) -> Int[Array, "*b u"]:
        """Tokens of a log-mel ``[t, m]`` or ``[b, t, m]``: int32 ``[..., t // 2]`` (an odd last frame is dropped).

        Deterministic: the nearest centroid, ties to the lowest index. Jittable.
        """
        shape = np.shape(mel)
        if len(shape) < 2 or shape[-1] != self.n_mels:
            raise ValueError(f"mel: expected shape [..., t, {self.n_mels}], got {shape}")
        if shape[-2] < 2:
            raise ValueError(f"mel: expected at least 2 frames (one token), got {shape[-2]}")
        return _encode(jnp.asarray(mel, jnp.float32), self.centroids, self.mean, self.std)

    @classmethod
    def fit(cls, mels, vocab_size: int, key: Key, n_iter: int = 50) -> tuple["SpeechTokenizer", np.ndarray]:
        """Fits the standardisation and ``vocab_size`` centroids on the frame pairs of a list of ``[t, m]`` mels.

        Returns:
          ``(tokenizer, objective [n_iter + 1])`` (the k-means objective per Lloyd iteration).
        """
        pairs = [np.asarray(pair_frames(np.asarray(m, np.float32))) for m in mels]
        if not pairs:
            raise ValueError("mels: expected at least one mel spectrogram, got none")
        feats = np.concatenate(pairs, axis=0).astype(np.float64)  # [n, 2m]
        mean = feats.mean(axis=0)
        std = np.maximum(feats.std(axis=0), 1e-5)
        x = ((feats - mean) / std).astype(np.float32)
        centroids, objective = fit_kmeans(x, vocab_size, key, n_iter)
        tok = cls(np.asarray(centroids, np.float32), mean.astype(np.float32), std.astype(np.float32))
        return tok, np.asarray(objective)

    def save(self, path) -> None:
        """Writes an ``.npz`` with the centroids and standardisation."""
        path = pathlib.Path(os.fspath(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, format=np.array(_FORMAT), centroids=self.centroids, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path) -> "SpeechTokenizer":
        """Reads a file written by :meth:`save`. Raises ``FileNotFoundError`` or ``ValueError`` (not a tokenizer)."""
        path = pathlib.Path(os.fspath(path))
        if not path.is_file():
            raise FileNotFoundError(f"path: tokenizer file {str(path)!r} does not exist")
        with np.load(path) as f:
            if "format" not in f.files or str(f["format"]) != _FORMAT:
                raise ValueError(f"path: {str(path)!r} is not a speech tokenizer file (no format={_FORMAT!r})")
            return cls(*(np.asarray(f[k], np.float32) for k in ("centroids", "mean", "std")))
