"""CosyVoice3's flow (``CausalMaskedDiffWithDiT``): no conformer; tokens -> an 80-dim embedding -> a pre-lookahead
conv layer -> each token repeated ``token_mel_ratio`` times = ``mu``; the estimator is the DiT.

Parts (SPEC §8; Flax names = torch names):

==========================  ===============================================================================
``input_embedding``         :class:`~fmjax.models.encoder.TokenEmbedding` (vocab -> ``token_dim`` = 80)
``pre_lookahead_layer``     :class:`~fmjax.models.encoder.PreLookahead`: conv1 (k = L + 1) over the tokens and
                            ``L = 3`` look-ahead tokens, leaky ReLU 0.01, causal conv2 (k = 3), + input
``spk_embed_affine_layer``  ``Linear(spk_embed_dim -> spk_dim)`` on the L2-normalised embedding
``decoder``                 :class:`~fmjax.models.dit.DiT` (torch ``decoder.estimator``)
==========================  ===============================================================================

It has the entry points of :class:`~fmjax.models.flow.CosyVoice2Flow` (``speaker``, ``encode``, ``estimate``, the
cache constructors), so :func:`fmjax.token2mel.token2mel`, :func:`fmjax.token2mel.flow_loss` and
:class:`fmjax.token2mel_stream.Token2MelStream` serve both. The token side has no attention: chunk masks change
only the DiT, and its streaming state is conv2's 2-frame history. Padded tokens embed to zeros (as torch's
``finalize`` padding), so a ragged batch equals its rows run alone.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.cond import MelCond
from fmjax.models.dit import DiT, DiTConfig, unstack_block_params
from fmjax.nn.conv import ConvCache
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import LOOKAHEAD_CONV2_KERNEL, PreLookahead, TokenEmbedding, project_speaker, token_mask
from fmjax.streaming import keep_idle_rows
from fmjax.typing import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class CosyVoice3FlowConfig:
    """Sizes of :class:`CosyVoice3Flow` (defaults: CosyVoice3, 332,257,088 parameters).

    Attributes:
      vocab_size: speech-token vocabulary (6561).
      spk_embed_dim: width of the input speaker embedding (192).
      lookahead_channels: inner width of the pre-lookahead layer (1024).
      pre_lookahead_len: look-ahead tokens ``L`` (3).
      token_mel_ratio: mel frames per token (2).
      chunk_size: streaming chunk ``C`` in tokens (25); the DiT's chunk is ``C · token_mel_ratio`` frames.
      estimator: the DiT; its ``mu_dim`` is the token embedding width.
    """

    vocab_size: int = 6561
    spk_embed_dim: int = 192
    lookahead_channels: int = 1024
    pre_lookahead_len: int = 3
    token_mel_ratio: int = 2
    chunk_size: int = 25
    estimator: DiTConfig = DiTConfig()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "estimator":
                if not isinstance(value, DiTConfig):
                    raise TypeError(f"CosyVoice3FlowConfig.estimator: expected a DiTConfig, got {type(value).__name__}")
            elif not isinstance(value, int) or value < (0 if f.name == "pre_lookahead_len" else 1):
                raise ValueError(f"CosyVoice3FlowConfig.{f.name}: expected a positive int, got {value!r}")
        if self.estimator.chunk_size != self.chunk_size * self.token_mel_ratio:
            raise ValueError(
                f"CosyVoice3FlowConfig.estimator.chunk_size: expected chunk_size · token_mel_ratio = "
                f"{self.chunk_size * self.token_mel_ratio} frames, got {self.estimator.chunk_size}"
            )

    @property
    def token_dim(self) -> int:
        """Width of the token embedding and of ``mu`` (the DiT's ``mu_dim``)."""
        return self.estimator.mu_dim

    @property
    def num_left_chunks(self) -> int:
        return self.estimator.num_left_chunks

    @property
    def mel_dim(self) -> int:
        return self.estimator.mel_dim

    @property
    def spk_dim(self) -> int:
        return self.estimator.spk_dim

    @property
    def causal(self) -> bool:
        """Chunk-masked mode and streaming: yes."""
        return True

    def chunk_spec(self, chunked) -> ChunkSpec:
        """The token-level :class:`~fmjax.nn.masks.ChunkSpec` of the chunk-masked mode (the streaming chunks) for
        rows where ``chunked [b]`` is True, full context elsewhere."""
        return ChunkSpec.rows(chunked, self.chunk_size, self.num_left_chunks)


class CosyVoice3Flow(nn.Module):
    """CosyVoice3's token-to-mel flow (see the module docstring)."""

    config: CosyVoice3FlowConfig = CosyVoice3FlowConfig()

    def setup(self):
        cfg = self.config
        self.input_embedding = TokenEmbedding(cfg.vocab_size, cfg.token_dim)
        self.pre_lookahead_layer = PreLookahead(cfg.pre_lookahead_len, cfg.lookahead_channels)
        self.spk_embed_affine_layer = nn.Dense(cfg.spk_dim)
        self.decoder = DiT(cfg.estimator)

    def __call__(
        self, tokens: Int[Array, "b n"], embedding: Float[Array, "b s"], x: Float[Array, "b t m"], t
    ) -> Float[Array, "b t m"]:
        """Runs every part once (for ``init``): velocity at ``t`` of ``x [b, r·n, m]``, no prompt."""
        mu, _ = self.encode(tokens)
        mask = jnp.repeat(token_mask(None, *tokens.shape), self.config.token_mel_ratio, axis=1).astype(jnp.float32)
        v, _ = self.estimate(x, MelCond(mu, self.speaker(embedding), jnp.zeros_like(x), mask), t)
        return v

    def speaker(self, embedding: Float[Array, "b s"]) -> Float[Array, "b e"]:
        """``spk_embed_affine_layer(F.normalize(embedding))``."""
        return project_speaker(self.spk_embed_affine_layer, embedding, self.config.spk_embed_dim)

    def encode(
        self,
        tokens: Int[Array, "b n"],
        mask=None,
        *,
        context: Int[Array, "b l"] | None = None,
        context_lengths: Int[Array, "b"] | None = None,
        chunk: ChunkSpec | None = None,
        cache: ConvCache | None = None,
        return_aux: bool = False,
        chunk_masked: bool | None = None,
    ):
        """Tokens -> ``(mu, cache)`` (as :meth:`fmjax.models.flow.CosyVoice2Flow.encode`; ``chunk`` and the deprecated
        ``chunk_masked`` have no effect here: the token side has no attention). A streaming chunk is ``C`` tokens
        (shorter ones padded and masked); rows whose chunk is shorter than ``C`` get no look-ahead, rows with no
        valid token are idle. ``return_aux`` adds ``{"hidden": h [b, n, token_dim]}`` (the pre-lookahead output)."""
        cfg = self.config
        if chunk_masked is not None and not isinstance(chunk_masked, bool):
            raise TypeError(f"chunk_masked: expected a Python bool (deprecated), got {type(chunk_masked).__name__}")
        if chunk is not None and not isinstance(chunk, ChunkSpec):
            raise TypeError(f"chunk: expected a fmjax.nn.masks.ChunkSpec or None, got {type(chunk).__name__}")
        b, n = tokens.shape
        if cache is not None:
            if n > cfg.chunk_size:
                raise ValueError(f"tokens: a streaming chunk holds at most chunk_size = {cfg.chunk_size} tokens, "
                                 f"got {n}")
            valid = jnp.pad(token_mask(mask, b, n), ((0, 0), (0, cfg.chunk_size - n)))  # [b, C]
            tokens = jnp.pad(tokens, ((0, 0), (0, cfg.chunk_size - n)))
            full = jnp.all(valid, axis=1)  # [b]
        else:
            valid, full = token_mask(mask, b, n), jnp.ones((b,), bool)
        emb = self.input_embedding(tokens, valid)  # [b, n, e]
        ahead = self._lookahead(context, context_lengths, full, b, emb.dtype)  # [b, L, e]
        h, new_cache = self.pre_lookahead_layer(jnp.concatenate([emb, ahead], axis=1), cache)  # [b, n, e]
        if cache is not None:
            new_cache = keep_idle_rows(jnp.any(valid, axis=1), new_cache, cache)
        mu = jnp.repeat(h, cfg.token_mel_ratio, axis=1)  # [b, r·n, e]
        return (mu, new_cache, {"hidden": h}) if return_aux else (mu, new_cache)

    def _lookahead(self, context, context_lengths, full, b, dtype) -> Float[Array, "b l e"]:
        cfg = self.config
        n_ahead = cfg.pre_lookahead_len
        if context is None or context.shape[1] == 0:
            return jnp.zeros((b, n_ahead, cfg.token_dim), dtype)
        l = context.shape[1]
        if l > n_ahead or context.shape[0] != b:
            raise ValueError(f"context: expected shape [{b}, <= {n_ahead}], got {context.shape}")
        lengths = jnp.full((b,), l, jnp.int32) if context_lengths is None else jnp.asarray(context_lengths)
        keep = (jnp.arange(l)[None, :] < lengths[:, None]) & full[:, None]  # [b, l]
        ahead = self.input_embedding(context, keep)  # [b, l, e]
        return jnp.pad(ahead, ((0, 0), (0, n_ahead - l), (0, 0)))

    def estimate(self, x: Float[Array, "b t m"], cond: MelCond, t, cache=None, *, return_aux: bool = False,
                 streaming: bool | None = None):
        """The DiT: ``(v, cache)`` (``cache`` None offline)."""
        return self.decoder(x, cond, t, cache, return_aux=return_aux, streaming=streaming)

    @nn.nowrap
    def init_encoder_cache(self, batch: int, window_tokens: int, dtype=jnp.float32) -> ConvCache:
        """Token-side streaming state: conv2's input history ``[batch, 2, lookahead_channels]`` (no window)."""
        del window_tokens  # convolutions only
        return ConvCache(jnp.zeros((batch, LOOKAHEAD_CONV2_KERNEL - 1, self.config.lookahead_channels), dtype))

    @nn.nowrap
    def init_estimator_cache(self, batch: int, window_frames: int, dtype=jnp.float32):
        """Empty DiT streaming state holding ``window_frames`` frames of K/V."""
        return DiT(self.config.estimator).init_cache(batch, window_frames, dtype)

    @nn.nowrap
    def streaming_params(self, variables: dict) -> dict:
        """Deprecated: one layout serves offline and streaming. Converts the fmjax < 0.2 layout (stacked DiT
        blocks) and passes the current one through."""
        params = dict(variables["params"])
        params["decoder"] = unstack_block_params({"params": params["decoder"]})["params"]
        return {**variables, "params": params}
