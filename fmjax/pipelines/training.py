"""Training losses of token-to-mel flows: CosyVoice's CFM loss, and CosyVoice2's unified chunk/full training with
the chunk masks as data.

:func:`flow_loss` (CosyVoice2's ``forward`` + ``compute_loss``) draws the attention chunks of every row -- with
:class:`UnifiedChunks`, CosyVoice2's streaming chunks with probability 0.5 and full context otherwise; with
:class:`DynamicChunks`, WeNet's dynamic chunk training -- and evaluates :class:`fmjax.loss.CFMLoss` (uniform t,
sigma 1e-6, CFG dropout 0.2, a prompt prefix of ``U{0..⌊0.3·len⌋}`` frames with probability 0.5). The draw is a
:class:`~fmjax.nn.masks.ChunkSpec` handed to the encoder and the estimator, so chunk-masked, full-context and mixed
batches are one compiled step with the cost of one forward/backward (no ``lax.cond`` between two programs). Draws
are per row by default (every utterance is chunk-masked with the same probability as CosyVoice2's per-batch draw);
``per_row=False`` restores the per-batch draw.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond
from fmjax.loss import CFMLoss, LossDraws
from fmjax.nn.masks import ChunkSpec, dynamic_chunk_spec
from fmjax.nn.tokens import check_speaker_embedding
from fmjax.paths import CondOTPath
from fmjax.pipelines.common import flow_condition, flow_source, flow_velocity, has_default_source
from fmjax.timesteps import Uniform
from fmjax.typing import Array, Float, Key

__all__ = ["COSYVOICE2_LOSS", "UnifiedChunks", "DynamicChunks", "cfm_loss", "flow_loss"]

COSYVOICE2_LOSS = CFMLoss(
    path=CondOTPath(1e-6), t_sampler=Uniform(), cfg_rate=0.2, prompt_prob=0.5, prompt_max_frac=0.3
)
"""CosyVoice2 HEAD's training loss: uniform t, sigma 1e-6, CFG dropout 0.2, prompt prefix prob 0.5 / max 0.3."""


@dataclasses.dataclass(frozen=True)
class UnifiedChunks:
    """CosyVoice2's unified streaming/offline training: chunk-masked (the flow's streaming chunks ``C``, ``L``) with
    probability ``prob``, full context otherwise.

    Attributes:
      prob: probability of the chunk-masked mode (0.5; 0 = offline only, 1 = streaming only).
      per_row: draw for every row (default) or once per batch (CosyVoice2's ``random.random() < 0.5`` per batch).
    """

    prob: float = 0.5
    per_row: bool = True

    def __post_init__(self):
        if not (isinstance(self.prob, (int, float)) and 0.0 <= self.prob <= 1.0):
            raise ValueError(f"prob: expected a probability in [0, 1], got {self.prob!r}")

    def draw(self, key: Key, batch: int, config, max_tokens: int) -> ChunkSpec:
        """The token-level chunks of ``batch`` rows (``config``: the flow's)."""
        del max_tokens
        shape = (batch,) if self.per_row else ()
        chunked = jnp.broadcast_to(jax.random.uniform(key, shape) < self.prob, (batch,))
        return config.chunk_spec(chunked)


@dataclasses.dataclass(frozen=True)
class DynamicChunks:
    """WeNet's dynamic chunk training over the token axis (``add_optional_chunk_mask`` with ``use_dynamic_chunk``):
    a chunk of ``U{1..max_len-1}`` tokens, full context when it exceeds half the length (``enable_full_context``),
    else ``c % max_chunk + 1``; optionally a random left context. Streaming then works at any chunk size up to
    ``max_chunk``.

    Attributes:
      max_chunk: largest trained chunk in tokens (25).
      use_dynamic_left_chunk: also draw the left context.
      enable_full_context: allow full-context draws.
      per_row: draw for every row (default) or once per batch (WeNet's per-batch draw).
    """

    max_chunk: int = 25
    use_dynamic_left_chunk: bool = False
    enable_full_context: bool = True
    per_row: bool = True

    def __post_init__(self):
        if not (isinstance(self.max_chunk, int) and self.max_chunk >= 1):
            raise ValueError(f"max_chunk: expected an int >= 1, got {self.max_chunk!r}")

    def draw(self, key: Key, batch: int, config, max_tokens: int) -> ChunkSpec:
        del config
        return dynamic_chunk_spec(key, batch, max_tokens, per_row=self.per_row,
                                  use_dynamic_left_chunk=self.use_dynamic_left_chunk,
                                  enable_full_context=self.enable_full_context, max_chunk=self.max_chunk)


def cfm_loss(
    model, params, x1: Float[Array, "b t m"], cond: MelCond, key: Key | None = None, *,
    streaming: bool = False, draws: LossDraws | None = None, loss: CFMLoss = COSYVOICE2_LOSS,
) -> tuple[Float[Array, ""], dict]:
    """The CFM loss of the flow's estimator (CosyVoice's ``compute_loss``) for given conditions.

    Args:
      model, params: the flow.
      x1: ``[b, t, m]`` target mel.
      cond: :class:`~fmjax.cond.MelCond` (``mask`` selects the frames in the loss; ``chunk`` the attention).
      key: PRNG key for the draws not given in ``draws``.
      streaming: deprecated: chunk-mask every row with the flow's streaming chunks (sets ``cond.chunk``).
      draws: inject ``t``, ``z``, ``keep``, ``prompt_len`` (parity tests).
      loss: the loss configuration (CosyVoice2's by default; the prompt prefix overwrites ``cond.prompt``).

    Returns:
      ``(loss, aux)`` as :class:`~fmjax.loss.CFMLoss`.
    """
    if streaming:
        cfg = model.config
        cond = cond._replace(chunk=cfg.chunk_spec(jnp.ones((x1.shape[0],), bool)).scaled(cfg.token_mel_ratio))
    return loss(flow_velocity(model, params), x1, cond.mask, cond, key, draws=draws)


def _batch_field(batch, name: str):
    if isinstance(batch, dict):
        if name not in batch:
            raise ValueError(f"batch: missing field {name!r} (have {sorted(batch)})")
        return batch[name]
    if not hasattr(batch, name):
        raise ValueError(f"batch: missing field {name!r} (a fmjax.data.batching.Batch or a dict with it)")
    return getattr(batch, name)


def check_prior_weight(value, name: str = "prior_weight") -> float:
    """``value`` as a float if it is a number >= 0 (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


def flow_loss(
    model, params, batch, key: Key, *, loss: CFMLoss = COSYVOICE2_LOSS, chunk_prob: float = 0.5,
    chunks: UnifiedChunks | DynamicChunks | None = None, draws: LossDraws | None = None, prior_weight: float = 0.0,
) -> tuple[Float[Array, ""], dict]:
    """CosyVoice2's training loss for a padded batch, jit-friendly (one compilation per batch shape).

    Args:
      model, params: the flow.
      batch: a :class:`fmjax.data.batching.Batch` (or a dict) with ``tokens [b, u]`` int, ``token_len [b]``,
        ``mel [b, r·u, m]`` and ``spk [b, spk_embed_dim]``. Frames past ``r·token_len`` are padding and never
        reach the loss; rows of length 0 (filler) contribute nothing.
      key: PRNG key (split into the chunk draw and the loss draws).
      loss: the CFM loss configuration (CosyVoice2's by default).
      chunk_prob: ``UnifiedChunks(chunk_prob)`` when ``chunks`` is None (0.5; 0 or 1 fix the mode).
      chunks: how attention chunks are drawn (:class:`UnifiedChunks`, :class:`DynamicChunks`); non-causal flows
        (the Matcha U-Net) train with full context and ignore it.
      draws: inject the loss's random numbers (tests); ``draws.z`` is the noise ``z`` before the flow config's
        source is applied (``x0 = source_std · z + source_mu · mu``, :func:`fmjax.pipelines.common.flow_source`).
      prior_weight: weight of Matcha-TTS's prior loss added to the CFM loss: the mean squared error between the
        encoder's condition ``mu [b, r·u, m]`` and the target mel over the valid frames (Matcha-TTS's ``prior_loss``
        without its constant ``log 2π`` term). 0 (CosyVoice2's loss, the default) leaves the program unchanged.

    Returns:
      ``(loss, aux)`` with ``per_example [b]`` (the CFM term only), ``t [b]``, ``weight [b]`` (0 for filler rows),
      ``chunk [b]`` (the token chunk size of each row; ``FULL_CONTEXT`` = full), the scalar ``chunk_masked`` (the
      share of chunk-masked rows) and, when ``prior_weight > 0``, the scalar ``prior_loss``.
    """
    check_prior_weight(prior_weight)
    if chunks is None:
        if not isinstance(chunk_prob, jax.core.Tracer) and not 0.0 <= chunk_prob <= 1.0:
            raise ValueError(f"chunk_prob: expected a probability in [0, 1], got {chunk_prob!r}")
        chunks = UnifiedChunks(chunk_prob) if not isinstance(chunk_prob, jax.core.Tracer) else None
    if chunks is not None and not isinstance(chunks, (UnifiedChunks, DynamicChunks)):
        raise TypeError(f"chunks: expected UnifiedChunks or DynamicChunks, got {type(chunks).__name__}")
    tokens, token_len = _batch_field(batch, "tokens"), _batch_field(batch, "token_len")
    mel, spk = _batch_field(batch, "mel"), _batch_field(batch, "spk")
    cfg = model.config
    b, u = jnp.shape(tokens)
    expected = (b, cfg.token_mel_ratio * u, cfg.mel_dim)
    if tuple(jnp.shape(mel)) != expected:
        raise ValueError(
            f"batch.mel: expected shape {expected} ({cfg.token_mel_ratio} frames per token), got {jnp.shape(mel)}"
        )
    if jnp.shape(token_len) != (b,):
        raise ValueError(f"batch.token_len: expected shape [{b}], got {jnp.shape(token_len)}")
    check_speaker_embedding(spk, b, cfg.spk_embed_dim, "batch.spk")
    key_chunk, key_loss = jax.random.split(key)
    if not cfg.causal:
        chunk = None
    elif chunks is None:  # a traced chunk_prob: the unified draw with a traced probability
        chunk = cfg.chunk_spec(jax.random.uniform(key_chunk, (b,)) < chunk_prob)
    else:
        chunk = chunks.draw(key_chunk, b, cfg, u)
    token_len = jnp.asarray(token_len, jnp.int32)
    cond = flow_condition(model, params, jnp.asarray(tokens, jnp.int32), token_len, jnp.asarray(spk, jnp.float32),
                          chunk=chunk)
    if not has_default_source(cfg):  # the config's source (x0 = source_std·z + source_mu·mu) from the loss's z
        given = draws or LossDraws()
        drawn = loss.draw(key_loss, jnp.asarray(mel, jnp.float32), cond.mask)
        full = LossDraws(*[g if g is not None else d for g, d in zip(given, drawn)])
        draws = full._replace(z=flow_source(cfg, jnp.asarray(full.z, jnp.float32), cond.mu))
    value, aux = loss(flow_velocity(model, params), jnp.asarray(mel, jnp.float32), cond.mask, cond, key_loss,
                      draws=draws)
    aux = {k: aux[k] for k in ("per_example", "t", "keep", "prompt_len")}
    if prior_weight > 0:
        frame_mask = cond.mask.astype(jnp.float32)[..., None]  # [b, r·u, 1]
        err = (cond.mu.astype(jnp.float32) - jnp.asarray(mel, jnp.float32)) * frame_mask
        prior = jnp.sum(err**2) / jnp.maximum(jnp.sum(frame_mask) * cfg.mel_dim, 1e-12)
        value = value + prior_weight * prior
        aux["prior_loss"] = prior
    aux["weight"] = (token_len > 0).astype(jnp.float32)
    if chunk is None:
        aux["chunk"] = jnp.full((b,), np.iinfo(np.int32).max, jnp.int32)
        aux["chunk_masked"] = jnp.zeros((), jnp.float32)
    else:
        aux["chunk"] = chunk.size
        aux["chunk_masked"] = jnp.mean((chunk.size < u).astype(jnp.float32))
    return value, aux
