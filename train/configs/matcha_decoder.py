"""matcha_decoder: Matcha-TTS's non-causal U-Net (:class:`fmjax.models.unet.ConditionalDecoder`) as a token-to-mel
flow on the shipped speech corpus.

    python -m train --config train/configs/matcha_decoder.py --preset tiny --workdir /tmp/matcha_decoder

Expected result (tiny preset, measured on a 2-core CPU at load ~4-5: 4 min 36 s for 800 steps): on the 8
validation sentences generated with CosyVoice's sampler (cosine grid, 10 Euler steps, CFG 0.7, same-speaker
prompt), val mel L1 1.082 against the speaker-mean baseline's 1.432 (ratio 0.755) and val MCD 47.8 against
68.1 dB (step 400: 1.138 / 51.5).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.cond import MelCond
from fmjax.loss import CFMLoss
from fmjax.models.flow import check_speaker_embedding, normalize_speaker
from fmjax.models.unet import ConditionalDecoder, UNetConfig
from fmjax.paths import CondOTPath
from fmjax.timesteps import Uniform
from fmjax.typing import Array, Float, Int
from train.config import Config, OptimConfig, TrainConfig
from train.corpus_experiment import CorpusData, CorpusExperiment

PRESETS = ("tiny", "default")
TOKEN_MEL_RATIO = 2  # the corpus's 25-Hz tokens against its 50-Hz mel frames


@dataclasses.dataclass(frozen=True)
class TokenUNetConfig:
    """Sizes of :class:`TokenUNet`.

    Attributes:
      vocab_size: speech-token vocabulary (the corpus's 256).
      spk_embed_dim: width of the input speaker embedding (the corpus's 192).
      embed_dim: width of the learned token embedding table.
      unet: the estimator; ``mu_dim`` is the width ``mu`` is projected to (80), ``spk_dim`` the projected speaker
        width, ``cond_dim`` must be ``mel_dim`` (the prompt mel), and ``2^(levels-1)`` must divide the 2 frames
        per token (Matcha's 2 levels) unless ``crop_upsampled``, so that every token sequence has a valid length.
    """

    vocab_size: int = 256
    spk_embed_dim: int = 192
    embed_dim: int = 256
    unet: UNetConfig = UNetConfig(spk_dim=64, cond_dim=80)

    def __post_init__(self):
        for name in ("vocab_size", "spk_embed_dim", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}: expected a positive int, got {value!r}")
        u = self.unet
        if u.cond_dim != u.mel_dim or u.spk_dim < 1:
            raise ValueError(f"model.unet: expected cond_dim = mel_dim = {u.mel_dim} (the prompt mel) and spk_dim >= 1, "
                             f"got cond_dim {u.cond_dim}, spk_dim {u.spk_dim}")
        if not u.crop_upsampled and TOKEN_MEL_RATIO % u.length_multiple:
            raise ValueError(f"model.unet.channels: {len(u.channels)} levels need frame counts divisible by "
                             f"{u.length_multiple}, but a token sequence has {TOKEN_MEL_RATIO}·n frames; use at most "
                             "2 levels or set model.unet.crop_upsampled=true")

    @property
    def token_mel_ratio(self) -> int:
        return TOKEN_MEL_RATIO

    @property
    def mel_dim(self) -> int:
        return self.unet.mel_dim


class TokenUNet(nn.Module):
    """Tokens + speaker embedding -> the conditions of a Matcha U-Net, with the flow interface of
    :class:`fmjax.models.flow.CosyVoice2Flow` (``speaker``, ``encode``, ``estimate``), so that
    :func:`fmjax.token2mel.token2mel` samples it.

    ``mu`` is a learned token embedding (``token_embedding``, ``[vocab, embed_dim]``) projected to ``unet.mu_dim``
    (``token_proj``) and repeated twice in time (nearest-neighbour upsampling to the 50-Hz mel rate; projecting
    before repeating is the same map at half the cost). ``spks`` is ``speaker_proj`` of the L2-normalised speaker
    embedding. Matcha's text encoder and duration model are not used: the tokens are already aligned to the frames.
    """

    config: TokenUNetConfig = TokenUNetConfig()

    def setup(self):
        cfg = self.config
        self.token_embedding = nn.Embed(cfg.vocab_size, cfg.embed_dim)
        self.token_proj = nn.Dense(cfg.unet.mu_dim)
        self.speaker_proj = nn.Dense(cfg.unet.spk_dim)
        self.decoder = ConditionalDecoder(cfg.unet)

    def __call__(self, tokens: Int[Array, "b n"], embedding: Float[Array, "b s"], x: Float[Array, "b t m"], t):
        """Every part once (for ``init``): the velocity at ``t`` of ``x [b, 2n, m]`` given the tokens, no prompt."""
        mu, mask = self.encode(tokens)
        v, _ = self.estimate(x, MelCond(mu, self.speaker(embedding), jnp.zeros_like(x), mask), t)
        return v

    def speaker(self, embedding: Float[Array, "b s"]) -> Float[Array, "b e"]:
        """``[b, spk_embed_dim]`` -> ``spks [b, unet.spk_dim]``."""
        check_speaker_embedding(embedding, None, self.config.spk_embed_dim)
        return self.speaker_proj(normalize_speaker(embedding))  # [b, spk_dim]

    def encode(self, tokens: Int[Array, "b n"], lengths: Int[Array, "b"] | None = None, *, chunk_masked: bool = False,
               return_hidden: bool = False):
        """Tokens -> ``(mu [b, 2n, mu_dim], mask [b, 2n])`` (``+ hidden [b, 2n, embed_dim]`` with ``return_hidden``);
        ``mu`` is zero past each row's ``2·lengths`` frames."""
        if chunk_masked:
            raise ValueError("chunk_masked: the non-causal Matcha decoder has no chunk masks (use streaming=False)")
        if getattr(tokens, "ndim", None) != 2:
            raise ValueError(f"tokens: expected [b, n] ids, got shape {getattr(tokens, 'shape', None)}")
        b, n = tokens.shape
        lengths = jnp.full((b,), n, jnp.int32) if lengths is None else lengths
        token_mask = (jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.float32)  # [b, n]
        emb = self.token_embedding(tokens)  # [b, n, embed_dim]
        mu = self.token_proj(emb) * token_mask[..., None]  # [b, n, mu_dim]
        mu = jnp.repeat(mu, TOKEN_MEL_RATIO, axis=1)  # [b, 2n, mu_dim]
        mask = jnp.repeat(token_mask, TOKEN_MEL_RATIO, axis=1)  # [b, 2n]
        if return_hidden:
            return mu, mask, jnp.repeat(emb, TOKEN_MEL_RATIO, axis=1)  # [b, 2n, embed_dim]
        return mu, mask

    def estimate(self, x: Float[Array, "b t m"], cond: MelCond, t, cache=None, *, streaming: bool = False):
        """The U-Net's ``(v [b, t, m], aux)``; offline only."""
        if streaming or cache is not None:
            raise ValueError("streaming: the non-causal Matcha decoder cannot stream (use the token2mel experiment)")
        return self.decoder(x, cond, t)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model and its training loss: Matcha's path (sigma_min 1e-4), uniform t, plus CosyVoice's CFG dropout and
    prompt-prefix conditioning (Matcha itself has neither; they make prompted generation and CFG 0.7 meaningful).

    Attributes:
      net: :class:`TokenUNetConfig`.
      sigma_min, cfg_rate, prompt_prob, prompt_max_frac: :class:`fmjax.loss.CFMLoss`.
    """

    net: TokenUNetConfig = TokenUNetConfig()
    sigma_min: float = 1e-4
    cfg_rate: float = 0.2
    prompt_prob: float = 0.5
    prompt_max_frac: float = 0.3

    def __post_init__(self):
        if self.sigma_min < 0:
            raise ValueError(f"model.sigma_min: expected a value >= 0, got {self.sigma_min!r}")
        self.loss()  # CFMLoss validates the probabilities

    def loss(self) -> CFMLoss:
        return CFMLoss(path=CondOTPath(self.sigma_min), t_sampler=Uniform(), cfg_rate=self.cfg_rate,
                       prompt_prob=self.prompt_prob, prompt_max_frac=self.prompt_max_frac)


def get_config(preset: str = "tiny") -> Config:
    """The ``tiny`` (minutes on a CPU) or ``default`` (Matcha-TTS's decoder size) preset."""
    if preset == "tiny":
        unet = UNetConfig(spk_dim=64, cond_dim=80, channels=(64, 64), n_blocks=1, num_mid_blocks=1, num_heads=2,
                          head_dim=32)
        return Config(
            experiment="matcha_decoder",
            model=ModelConfig(net=TokenUNetConfig(embed_dim=64, unet=unet)),
            data=CorpusData(buckets=(64, 88), eval_sentences=8),
            optim=OptimConfig(lr=3e-3, warmup_steps=50, ema_decay=0.98),
            train=TrainConfig(steps=800, batch_size=16, log_every=25, eval_every=200, ckpt_every=400,
                              keep_checkpoints=2),
        )
    if preset == "default":
        return Config(
            experiment="matcha_decoder",
            model=ModelConfig(),
            data=CorpusData(buckets=(48, 64, 88), eval_sentences=32),
            optim=OptimConfig(lr=1e-4, warmup_steps=500, ema_decay=0.999),
            train=TrainConfig(steps=20000, batch_size=32, log_every=100, eval_every=2000, ckpt_every=2000),
        )
    raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")


class MatchaDecoder(CorpusExperiment):
    """The U-Net on corpus batches with :class:`fmjax.loss.CFMLoss`; padding rows weigh 0 in validation."""

    def __init__(self, config: Config):
        super().__init__(config)
        net = config.model.net
        self.check_model_config(net.vocab_size, net.spk_embed_dim)
        self.model = TokenUNet(net)
        self.loss = config.model.loss()

    def init_params(self, key):
        cfg, n = self.config.model.net, 4
        return self.model.init(key, jnp.zeros((1, n), jnp.int32), jnp.ones((1, cfg.spk_embed_dim), jnp.float32),
                               jnp.zeros((1, TOKEN_MEL_RATIO * n, cfg.mel_dim), jnp.float32), jnp.full((1,), 0.5))

    def loss_fn(self, params, batch, key):
        model = self.model
        mu, mask = model.apply(params, batch["tokens"], batch["token_len"], method="encode")  # [b, T, m], [b, T]
        cond = MelCond(mu, model.apply(params, batch["spk"], method="speaker"), jnp.zeros_like(mu), mask)

        def velocity(t, x, c):
            return model.apply(params, x, c, t, method="estimate")[0]

        loss, aux = self.loss(velocity, batch["mel"], mask, cond, key)
        return loss, {"per_example": aux["per_example"], "t": aux["t"], "weight": batch["row_mask"]}


def build(config: Config) -> MatchaDecoder:
    """The experiment for a resolved config."""
    return MatchaDecoder(config)
