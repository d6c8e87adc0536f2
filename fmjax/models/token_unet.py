"""A token-to-mel flow on Matcha-TTS's non-causal U-Net (:class:`fmjax.models.unet.ConditionalDecoder`): the model of
the ``matcha_decoder`` experiment, with the :class:`fmjax.models.protocol.Flow` interface (it does not stream).

``mu`` is a learned token embedding (``token_embedding``, ``[vocab, embed_dim]``) projected to ``unet.mu_dim``
(``token_proj``) and repeated ``token_mel_ratio`` times in time (nearest-neighbour upsampling to the mel rate;
projecting before repeating is the same map at half the cost). ``spks`` is ``speaker_proj`` of the L2-normalised
speaker embedding. Matcha's text encoder and duration model are not used: the tokens are already aligned to the
frames.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.cond import MelCond
from fmjax.models.unet import ConditionalDecoder, UNetConfig
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import frame_mask, project_speaker, token_mask
from fmjax.typing import Array, Float, Int

__all__ = ["TokenUNetConfig", "TokenUNet"]


@dataclasses.dataclass(frozen=True)
class TokenUNetConfig:
    """Sizes of :class:`TokenUNet`.

    Attributes:
      vocab_size: speech-token vocabulary (the corpus's 256).
      spk_embed_dim: width of the input speaker embedding (the corpus's 192).
      embed_dim: width of the learned token embedding table.
      unet: the estimator; ``mu_dim`` is the width ``mu`` is projected to (80), ``spk_dim`` the projected speaker
        width, ``cond_dim`` must be ``mel_dim`` (the prompt mel), and ``2^(levels-1)`` must divide the frames
        per token unless ``crop_upsampled``, so that every token sequence has a valid length.
      token_mel_ratio: mel frames per token (2: 25-Hz tokens, 50-Hz frames).
    """

    vocab_size: int = 256
    spk_embed_dim: int = 192
    embed_dim: int = 256
    unet: UNetConfig = UNetConfig(spk_dim=64, cond_dim=80)
    token_mel_ratio: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "spk_embed_dim", "embed_dim", "token_mel_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}: expected a positive int, got {value!r}")
        u = self.unet
        if u.cond_dim != u.mel_dim or u.spk_dim < 1:
            raise ValueError(f"model.unet: expected cond_dim = mel_dim = {u.mel_dim} (the prompt mel) and spk_dim >= 1, "
                             f"got cond_dim {u.cond_dim}, spk_dim {u.spk_dim}")
        if not u.crop_upsampled and self.token_mel_ratio % u.length_multiple:
            raise ValueError(f"model.unet.channels: {len(u.channels)} levels need frame counts divisible by "
                             f"{u.length_multiple}, but a token sequence has {self.token_mel_ratio}·n frames; use "
                             "fewer levels or set model.unet.crop_upsampled=true")

    @property
    def mel_dim(self) -> int:
        return self.unet.mel_dim

    @property
    def spk_dim(self) -> int:
        return self.unet.spk_dim

    @property
    def chunk_size(self) -> int:
        """Non-causal: no chunks (a stream would need the whole utterance); 1 as a placeholder."""
        return 1

    @property
    def pre_lookahead_len(self) -> int:
        return 0

    @property
    def num_left_chunks(self) -> int:
        return -1

    @property
    def causal(self) -> bool:
        """No chunk-masked mode, no streaming."""
        return False

    def chunk_spec(self, chunked) -> ChunkSpec:
        """Raises: the non-causal U-Net has no chunk-masked mode."""
        raise ValueError("chunk: the Matcha U-Net flow is not causal and has no chunk-masked mode")


class TokenUNet(nn.Module):
    """Tokens + speaker embedding -> the conditions of a Matcha U-Net (see the module docstring); a
    :class:`fmjax.models.protocol.Flow` without streaming."""

    config: TokenUNetConfig = TokenUNetConfig()

    def setup(self):
        cfg = self.config
        self.token_embedding = nn.Embed(cfg.vocab_size, cfg.embed_dim)
        self.token_proj = nn.Dense(cfg.unet.mu_dim)
        self.speaker_proj = nn.Dense(cfg.unet.spk_dim)
        self.decoder = ConditionalDecoder(cfg.unet)

    def __call__(self, tokens: Int[Array, "b n"], embedding: Float[Array, "b s"], x: Float[Array, "b t m"], t):
        """Every part once (for ``init``): the velocity at ``t`` of ``x [b, r·n, m]`` given the tokens, no prompt."""
        mu, _ = self.encode(tokens)
        mask = frame_mask(None, *tokens.shape, self.config.token_mel_ratio)
        v, _ = self.estimate(x, MelCond(mu, self.speaker(embedding), jnp.zeros_like(x), mask), t)
        return v

    def speaker(self, embedding: Float[Array, "b s"]) -> Float[Array, "b e"]:
        """``[b, spk_embed_dim]`` -> ``spks [b, unet.spk_dim]``."""
        return project_speaker(self.speaker_proj, embedding, self.config.spk_embed_dim)

    def encode(self, tokens: Int[Array, "b n"], mask=None, *, context=None, context_lengths=None, chunk=None,
               cache=None, return_aux: bool = False, chunk_masked: bool | None = None):
        """Tokens -> ``(mu [b, r·n, mu_dim], None)`` (``+ {"hidden": [b, r·n, embed_dim]}`` with ``return_aux``);
        ``mu`` is zero past each row's valid tokens (``mask``: ``[b, n]`` 0/1 or ``[b]`` lengths). Offline only,
        full context only: ``chunk``, ``chunk_masked`` and ``cache`` must be unset."""
        if chunk is not None or chunk_masked or cache is not None:
            raise ValueError("chunk: the Matcha U-Net flow is not causal: no chunk masks and no streaming (use the "
                             "token2mel experiment's CosyVoice2 flow)")
        if getattr(tokens, "ndim", None) != 2:
            raise ValueError(f"tokens: expected [b, n] ids, got shape {getattr(tokens, 'shape', None)}")
        b, n = tokens.shape
        r = self.config.token_mel_ratio
        valid = token_mask(mask, b, n).astype(jnp.float32)  # [b, n]
        emb = self.token_embedding(tokens)  # [b, n, embed_dim]
        mu = jnp.repeat(self.token_proj(emb) * valid[..., None], r, axis=1)  # [b, r·n, mu_dim]
        if return_aux:
            return mu, None, {"hidden": jnp.repeat(emb, r, axis=1)}  # [b, r·n, embed_dim]
        return mu, None

    def estimate(self, x: Float[Array, "b t m"], cond: MelCond, t, cache=None, *, return_aux: bool = False,
                 streaming: bool | None = None):
        """The U-Net's ``(v [b, t, m], None)``; offline, full context only."""
        if streaming:
            raise ValueError("streaming: the non-causal Matcha decoder has no chunk masks")
        return self.decoder(x, cond, t, cache, return_aux=return_aux)

    @nn.nowrap
    def init_encoder_cache(self, batch: int, window_tokens: int, dtype=jnp.float32):
        raise ValueError("model: the Matcha U-Net flow is not causal and cannot stream")

    @nn.nowrap
    def init_estimator_cache(self, batch: int, window_frames: int, dtype=jnp.float32):
        raise ValueError("model: the Matcha U-Net flow is not causal and cannot stream")
