"""CosyVoice2's flow (``CausalMaskedDiffWithXvec``): speech tokens (25 Hz) + speaker embedding -> the conditions
and the velocity of an 80-bin mel flow (50 Hz).

Parts (SPEC §1; Flax names = torch names with dots as ``/``):

==========================  ===============================================================================
``input_embedding``         :class:`~fmjax.models.encoder.TokenEmbedding` (vocab -> ``encoder.input_size``)
``spk_embed_affine_layer``  ``Linear(spk_embed_dim -> spk_dim)`` on the L2-normalised embedding (eps 1e-12)
``encoder``                 :class:`~fmjax.models.encoder.UpsampleConformerEncoder` (tokens -> 2 frames each)
``encoder_proj``            ``Linear(d -> mu_dim)``: ``mu``
``decoder``                 :class:`~fmjax.models.causal_unet.CausalConditionalDecoder` (torch
                            ``decoder.estimator``; the CFM wrapper itself has no parameters)
==========================  ===============================================================================

The module has several entry points (``speaker``, ``encode``, ``estimate``: the :class:`fmjax.models.protocol.Flow`
protocol), like Flax's lm1b ``Transformer`` (``encode``/``decode``), so it declares its parts in ``setup``;
``__call__`` runs all of them once (for ``init``). Samplers, CFG and the loss see only closures built from
``estimate`` (:func:`fmjax.pipelines.common.flow_velocity`); inference lives in :mod:`fmjax.pipelines`.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond
from fmjax.models.causal_unet import CausalConditionalDecoder, CausalUNetConfig, unstack_mid_params
from fmjax.models.encoder import EncoderConfig, UpsampleConformerEncoder
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import (  # noqa: F401  (speaker helpers: also importable from here, as before)
    SPEAKER_NORM_EPS,
    TokenEmbedding,
    check_speaker_embedding,
    frame_mask,
    normalize_speaker,
    project_speaker,
)
from fmjax.typing import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class Token2MelConfig:
    """Sizes of :class:`CosyVoice2Flow` (defaults: CosyVoice2, 112,549,360 parameters).

    Attributes:
      vocab_size: speech-token vocabulary (6561).
      spk_embed_dim: width of the input speaker embedding (192, CAM++ x-vectors).
      encoder: the upsampling conformer; its ``static_chunk_size`` is the streaming chunk ``C`` in tokens and
        its ``upsample_stride`` the token-to-mel ratio.
      estimator: the causal U-Net; its ``chunk_size`` must be ``C · token_mel_ratio`` frames and its
        ``num_left_chunks`` the encoder's.
      source_mu, source_std: the ODE's source at ``t = 0`` is ``x0 = source_std · z + source_mu · mu`` (``z`` the
        noise: CosyVoice's fixed table, a ``key`` draw or the loss's draw; ``mu [b, r·n, m]`` the encoder's
        condition). CosyVoice2: 0 and 1, pure noise (the default; the programs are then unchanged).
        ``source_mu = 1`` is Grad-TTS's prior-centred source: the flow only has to learn the way from its
        condition to the mel (the loss's gradient reaches the encoder through ``x0`` too); ``source_std < 1``
        narrows the noise around it (a temperature, trained and sampled alike). Offline, streaming and training
        all read them from here, so a stream still equals its offline twin (:func:`fmjax.pipelines.common.flow_source`).
      speaker_shift: add a learned per-speaker offset to the condition, ``mu += mu_shift(spks)`` (``mu_shift`` a
        zero-initialised ``Dense(spk_dim -> mel_dim)``, so a new model starts as CosyVoice2's). CosyVoice2's encoder
        never sees the speaker, so its ``mu`` can only be a speaker-independent guess of the mel; with the shift
        (and the prior loss or a centred source) ``mu`` can carry the speaker's mean frame as well. False (the
        default, CosyVoice2) adds no parameter and leaves the programs unchanged. Offline, streaming and training
        all apply it (:func:`fmjax.pipelines.common.shift_condition`).
    """

    vocab_size: int = 6561
    spk_embed_dim: int = 192
    encoder: EncoderConfig = EncoderConfig()
    estimator: CausalUNetConfig = CausalUNetConfig()
    source_mu: float = 0.0
    source_std: float = 1.0
    speaker_shift: bool = False

    def __post_init__(self):
        if not isinstance(self.speaker_shift, (bool, np.bool_)):
            raise TypeError(f"Token2MelConfig.speaker_shift: expected a bool, got {self.speaker_shift!r}")
        object.__setattr__(self, "speaker_shift", bool(self.speaker_shift))
        for name, low in (("source_mu", None), ("source_std", 0.0)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or (low is not None and not value > low)):
                raise ValueError(f"Token2MelConfig.{name}: expected a finite number"
                                 f"{'' if low is None else ' > 0'}, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("vocab_size", "spk_embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Token2MelConfig.{name}: expected a positive int, got {value!r}")
        if not isinstance(self.encoder, EncoderConfig):
            raise TypeError(f"Token2MelConfig.encoder: expected an EncoderConfig, got {type(self.encoder).__name__}")
        if not isinstance(self.estimator, CausalUNetConfig):
            raise TypeError(
                f"Token2MelConfig.estimator: expected a CausalUNetConfig, got {type(self.estimator).__name__}"
            )
        enc, est = self.encoder, self.estimator
        if est.chunk_size != enc.static_chunk_size * enc.upsample_stride:
            raise ValueError(
                f"Token2MelConfig.estimator.chunk_size: expected encoder.static_chunk_size · upsample_stride = "
                f"{enc.static_chunk_size * enc.upsample_stride} frames, got {est.chunk_size}"
            )
        if est.num_left_chunks != enc.num_left_chunks:
            raise ValueError(
                f"Token2MelConfig.estimator.num_left_chunks: expected the encoder's {enc.num_left_chunks}, "
                f"got {est.num_left_chunks}"
            )
        if est.mu_dim != est.mel_dim or est.cond_dim != est.mel_dim:
            raise ValueError(
                f"Token2MelConfig.estimator: mu_dim and cond_dim must equal mel_dim = {est.mel_dim}, "
                f"got {est.mu_dim} and {est.cond_dim}"
            )

    @property
    def chunk_size(self) -> int:
        """``C``: tokens per streaming chunk (and per chunk of the chunk masks)."""
        return self.encoder.static_chunk_size

    @property
    def token_mel_ratio(self) -> int:
        """Mel frames per token (2)."""
        return self.encoder.upsample_stride

    @property
    def pre_lookahead_len(self) -> int:
        """Tokens of look-ahead after a chunk (3)."""
        return self.encoder.pre_lookahead_len

    @property
    def num_left_chunks(self) -> int:
        """Left chunks visible to a chunk; ``-1`` = all (CosyVoice2 HEAD)."""
        return self.encoder.num_left_chunks

    @property
    def mel_dim(self) -> int:
        return self.estimator.mel_dim

    @property
    def spk_dim(self) -> int:
        """Width of the projected speaker vector (``MelCond.spks``)."""
        return self.estimator.spk_dim

    @property
    def causal(self) -> bool:
        """Chunk-masked mode and streaming: yes."""
        return True

    def chunk_spec(self, chunked) -> ChunkSpec:
        """The token-level :class:`~fmjax.nn.masks.ChunkSpec` of CosyVoice2's chunk-masked mode (the streaming
        chunks) for rows where ``chunked [b]`` (bool) is True, full context elsewhere."""
        return ChunkSpec.rows(chunked, self.chunk_size, self.num_left_chunks)


class CosyVoice2Flow(nn.Module):
    """CosyVoice2's token-to-mel flow (see the module docstring); a :class:`fmjax.models.protocol.Flow`. Entry points,
    via ``apply(..., method=...)``:

    * :meth:`speaker`: ``embedding [b, 192]`` -> ``spks [b, 80]``;
    * :meth:`encode`: tokens -> ``(mu, cache)`` (offline, or one streaming chunk with the encoder's cache);
    * :meth:`estimate`: the estimator's ``(v, cache)`` (offline, or one streaming chunk with its cache).
    """

    config: Token2MelConfig = Token2MelConfig()

    def setup(self):
        cfg = self.config
        self.input_embedding = TokenEmbedding(cfg.vocab_size, cfg.encoder.input_size)
        self.spk_embed_affine_layer = nn.Dense(cfg.spk_dim)
        self.encoder = UpsampleConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Dense(cfg.estimator.mu_dim)
        self.decoder = CausalConditionalDecoder(cfg.estimator)
        if cfg.speaker_shift:
            self.mu_shift = nn.Dense(cfg.mel_dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

    def __call__(
        self, tokens: Int[Array, "b n"], embedding: Float[Array, "b s"], x: Float[Array, "b t m"], t
    ) -> Float[Array, "b t m"]:
        """Runs every part once (for ``init``): velocity at ``t`` of ``x [b, 2n, m]`` given the tokens, no prompt."""
        mu, _ = self.encode(tokens)
        spks = self.speaker(embedding)
        if self.config.speaker_shift:
            mu = mu + self.shift(spks)[:, None]
        mask = frame_mask(None, *tokens.shape, self.config.token_mel_ratio)
        v, _ = self.estimate(x, MelCond(mu, spks, jnp.zeros_like(mu), mask), t)
        return v

    def speaker(self, embedding: Float[Array, "b s"]) -> Float[Array, "b e"]:
        """``spk_embed_affine_layer(F.normalize(embedding))``: ``[b, spk_embed_dim]`` -> ``[b, spk_dim]``."""
        return project_speaker(self.spk_embed_affine_layer, embedding, self.config.spk_embed_dim)

    def shift(self, spks: Float[Array, "b e"]) -> Float[Array, "b m"]:
        """The per-speaker offset of ``mu``: ``spks [b, spk_dim]`` -> ``[b, mel_dim]``; only for a config with
        ``speaker_shift`` (callers check it: :func:`fmjax.pipelines.common.shift_condition`)."""
        return self.mu_shift(spks)

    def encode(
        self,
        tokens: Int[Array, "b n"],
        mask=None,
        *,
        context: Int[Array, "b l"] | None = None,
        context_lengths: Int[Array, "b"] | None = None,
        chunk: ChunkSpec | None = None,
        cache=None,
        return_aux: bool = False,
        chunk_masked: bool | None = None,
    ):
        """Tokens -> ``mu`` at the mel frame rate.

        Args:
          tokens: ``[b, n]`` int ids (streaming: one chunk of ``n <= C``).
          mask: ``[b, n]`` 0/1 or ``[b]`` lengths of valid tokens; None = all valid. Ids at valid positions must
            be in ``[0, vocab_size)`` (checked when concrete).
          context: ``[b, l <= 3]`` ids of the look-ahead tokens after ``tokens`` (torch's ``context``); None = none
            (zeros, torch's ``finalize``).
          context_lengths: ``[b]`` valid look-ahead tokens per row (default all ``l``).
          chunk: offline only: per-row chunk attention in tokens (:class:`~fmjax.nn.masks.ChunkSpec`; None = full
            context). CosyVoice2's chunk-masked mode is :meth:`Token2MelConfig.chunk_spec`.
          cache: an :class:`~fmjax.models.encoder.EncoderCache` for one streaming step.
          return_aux: also return ``{"hidden": h [b, r·n, d]}``, the encoder output before ``encoder_proj`` (torch
            ``encoder_out``).
          chunk_masked: deprecated (offline only): ``True`` = the config's chunks for every row.

        Returns:
          ``(mu, cache)``: offline ``mu [b, r·n, m]`` and None; streaming ``mu [b, r·C, m]`` and the new cache;
          with ``return_aux`` a third element. ``r`` = token_mel_ratio; the frame mask is
          :func:`fmjax.nn.tokens.frame_mask` of the token mask.
        """
        emb = self.input_embedding(tokens, mask)  # [b, n, e]
        ctx = None
        if context is not None:
            ctx = self.input_embedding(context, context_lengths)  # [b, l, e]
        h, cache = self.encoder(
            emb, mask, context=ctx, context_lengths=context_lengths, chunk=chunk, cache=cache,
            chunk_masked=chunk_masked,
        )  # [b, r·n, d]
        mu = self.encoder_proj(h)  # [b, r·n, m]
        return (mu, cache, {"hidden": h}) if return_aux else (mu, cache)

    def estimate(self, x: Float[Array, "b t m"], cond: MelCond, t, cache=None, *, return_aux: bool = False,
                 streaming: bool | None = None):
        """The estimator: ``(v, cache)`` (``cache`` None offline; see
        :class:`~fmjax.models.causal_unet.CausalConditionalDecoder`)."""
        return self.decoder(x, cond, t, cache, return_aux=return_aux, streaming=streaming)

    @nn.nowrap
    def init_encoder_cache(self, batch: int, window_tokens: int, dtype=jnp.float32):
        """Empty encoder streaming state holding ``window_tokens`` tokens of K/V (shape-only)."""
        return UpsampleConformerEncoder(self.config.encoder).init_cache(batch, window_tokens, dtype)

    @nn.nowrap
    def init_estimator_cache(self, batch: int, window_frames: int, dtype=jnp.float32):
        """Empty estimator streaming state holding ``window_frames`` frames of K/V (shape-only)."""
        return CausalConditionalDecoder(self.config.estimator).init_cache(batch, window_frames, dtype)

    @nn.nowrap
    def streaming_params(self, variables: dict) -> dict:
        """Deprecated: the streaming step and the offline forward share one layout. Converts the fmjax < 0.2 layout
        (stacked or split mid stages) and passes the current one through."""
        params = dict(variables["params"])
        params["decoder"] = unstack_mid_params({"params": params["decoder"]})["params"]
        return {**variables, "params": params}


def init_flow_params(model: nn.Module, key, *, tokens: int = 4) -> dict:
    """Random parameters of a flow module (``model.init`` on a tiny dummy input)."""
    cfg = model.config
    r = cfg.token_mel_ratio
    return model.init(
        key,
        jnp.zeros((1, tokens), jnp.int32),
        jnp.ones((1, cfg.spk_embed_dim), jnp.float32),
        jnp.zeros((1, r * tokens, cfg.mel_dim), jnp.float32),
        jnp.full((1,), 0.5, jnp.float32),
    )


def flow_param_shapes(model: nn.Module, *, tokens: int = 4):
    """``jax.eval_shape`` of :func:`init_flow_params` (no compilation)."""
    return jax.eval_shape(lambda k: init_flow_params(model, k, tokens=tokens), jax.random.key(0))
