"""Token-side blocks shared by the token-to-mel flows (CosyVoice2, CosyVoice3, the Matcha-decoder flow): token
masks, the token embedding, CosyVoice's pre-lookahead conv layer and the speaker-embedding projection.

Token masks are ``[b, n]`` bool (from None = all valid, ``[b]`` int lengths, or a ``[b, n]`` 0/1 mask); a flow
with ``r`` mel frames per token gives its frames the token mask repeated ``r`` times (:func:`frame_mask`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_mask
from fmjax.nn.conv import CausalConv1d, Conv1d, ConvCache
from fmjax.typing import Array, Bool, Float, Int

__all__ = [
    "LOOKAHEAD_CONV2_KERNEL", "LEAKY_SLOPE", "SPEAKER_NORM_EPS", "token_mask", "frame_mask", "check_token_ids",
    "TokenEmbedding", "PreLookahead", "normalize_speaker", "check_speaker_embedding", "project_speaker",
]

LOOKAHEAD_CONV2_KERNEL = 3  # hard-coded in torch's PreLookaheadLayer
LEAKY_SLOPE = 0.01  # F.leaky_relu's default, used by PreLookaheadLayer
SPEAKER_NORM_EPS = 1e-12  # F.normalize's default


def token_mask(mask, b: int, t: int, name: str = "mask") -> Bool[Array, "b t"]:
    """``[b, t]`` bool from None (all valid), ``[b]`` int lengths or a ``[b, t]`` 0/1 mask."""
    if mask is None:
        return jnp.ones((b, t), bool)
    m = jnp.asarray(mask)
    if m.ndim == 1:
        if m.shape != (b,):
            raise ValueError(f"{name}: expected lengths of shape [{b}] or a mask of shape [{b}, {t}], got {m.shape}")
        if not jnp.issubdtype(m.dtype, jnp.integer):
            raise TypeError(f"{name}: lengths must be integers, got dtype {m.dtype}")
        return jnp.arange(t)[None, :] < m[:, None]  # [b, t]
    if m.shape != (b, t):
        raise ValueError(f"{name}: expected lengths of shape [{b}] or a mask of shape [{b}, {t}], got {m.shape}")
    check_mask(name, mask)  # 0/1 only (values checked when concrete)
    return m.astype(bool)


def frame_mask(mask, b: int, n: int, ratio: int) -> Float[Array, "b f"]:
    """The ``[b, ratio·n]`` float32 frame mask of tokens (``mask`` as :func:`token_mask`), each repeated ``ratio``
    times."""
    return jnp.repeat(token_mask(mask, b, n), ratio, axis=1).astype(jnp.float32)


def check_token_ids(tokens, vocab_size: int, mask=None) -> None:
    """Raises ``ValueError`` if a token at a valid position is outside ``[0, vocab_size)``.

    Padded positions (``mask`` 0) may hold anything (e.g. -1). The check needs concrete values; under ``jit``
    (tracers) it is skipped, so call it on the host before a jitted step.
    """
    if isinstance(tokens, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
        return
    ids = np.asarray(tokens)
    if ids.ndim != 2:
        raise ValueError(f"tokens: expected shape [b, t], got {ids.shape}")
    valid = np.asarray(token_mask(mask, *ids.shape, name="mask"))
    bad = valid & ((ids < 0) | (ids >= vocab_size))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"tokens: {int(bad.sum())} id(s) outside the vocabulary [0, {vocab_size}) at valid positions, "
            f"first tokens[{i}, {j}] = {int(ids[i, j])}"
        )


class TokenEmbedding(nn.Module):
    """CosyVoice's ``input_embedding``: ``table[id] · mask`` (param ``embedding [vocab, d]``).

    Ids at padded positions are clamped into range before the lookup (torch clamps them at 0) and the result is
    zeroed there. Out-of-vocabulary ids at valid positions raise ``ValueError`` when the ids are concrete
    (see :func:`check_token_ids`); inside ``jit`` they are clamped.

    Attributes:
      vocab_size: number of tokens (6561 for CosyVoice2).
      dim: embedding width.
    """

    vocab_size: int
    dim: int

    @nn.compact
    def __call__(self, tokens: Int[Array, "b t"], mask=None) -> Float[Array, "b t d"]:
        """``tokens [b, t]`` int, ``mask`` ``[b, t]`` 0/1 or ``[b]`` lengths -> ``[b, t, d]``."""
        tokens = tokens if isinstance(tokens, jax.core.Tracer) else jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens: expected integer ids, got dtype {tokens.dtype}")
        check_token_ids(tokens, self.vocab_size, mask)
        valid = token_mask(mask, *tokens.shape)
        table = self.param("embedding", nn.initializers.normal(1.0), (self.vocab_size, self.dim))
        emb = jnp.take(table, jnp.clip(tokens, 0, self.vocab_size - 1), axis=0)  # [b, t, d]
        return emb * valid[..., None].astype(emb.dtype)


class PreLookahead(nn.Module):
    """``conv2(leaky_relu(conv1(x_ext))) + x`` where ``x_ext`` is ``x`` followed by ``lookahead`` frames and
    ``conv2`` is causal (params ``conv1``, ``conv2``)."""

    lookahead: int
    channels: int

    @nn.compact
    def __call__(
        self, x_ext: Float[Array, "b te d"], cache: ConvCache | None = None
    ) -> tuple[Float[Array, "b t d"], ConvCache | None]:
        """``x_ext [b, t + lookahead, d]`` -> ``(y [b, t, d], new_cache)``; the cache holds ``conv2``'s input
        history (``None`` offline = zeros before the start)."""
        t = x_ext.shape[1] - self.lookahead
        a = Conv1d(self.channels, self.lookahead + 1, name="conv1")(x_ext)  # [b, t, c]
        a = nn.leaky_relu(a, LEAKY_SLOPE)
        y, cache = CausalConv1d(x_ext.shape[-1], LOOKAHEAD_CONV2_KERNEL, name="conv2")(a, cache)  # [b, t, d]
        return y + x_ext[:, :t], cache


def normalize_speaker(embedding: Float[Array, "b s"]) -> Float[Array, "b s"]:
    """torch ``F.normalize(embedding, dim=1)``: ``x / max(‖x‖, 1e-12)``."""
    norm = jnp.sqrt(jnp.sum(jnp.square(embedding), axis=-1, keepdims=True))
    return embedding / jnp.maximum(norm, SPEAKER_NORM_EPS)


def check_speaker_embedding(embedding, batch: int | None, dim: int, name: str = "embedding") -> None:
    """Raises ``ValueError``/``TypeError`` unless ``embedding`` is a float ``[batch, dim]`` array."""
    shape = getattr(embedding, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != dim or (batch is not None and shape[0] != batch):
        expected = f"[{'b' if batch is None else batch}, {dim}]"
        raise ValueError(f"{name}: expected a speaker embedding of shape {expected}, got {shape}")
    if not jnp.issubdtype(embedding.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {embedding.dtype}")


def project_speaker(layer: nn.Module, embedding: Float[Array, "b s"], dim: int) -> Float[Array, "b e"]:
    """CosyVoice's speaker conditioning: ``layer(F.normalize(embedding))`` after checking ``embedding [b, dim]``."""
    check_speaker_embedding(embedding, None, dim)
    return layer(normalize_speaker(embedding))  # [b, e]
