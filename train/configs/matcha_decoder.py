"""matcha_decoder: Matcha-TTS's non-causal U-Net (:class:`fmjax.models.unet.ConditionalDecoder`) as a token-to-mel
flow on the shipped speech corpus.

    python -m train --config train/configs/matcha_decoder.py --preset tiny --workdir /tmp/matcha_decoder

Expected result (tiny preset, measured on a 2-core CPU at load ~4-5: 4 min 36 s for 800 steps): on the 8
validation sentences generated with CosyVoice's sampler (cosine grid, 10 Euler steps, CFG 0.7, same-speaker
prompt), val mel L1 1.082 against the speaker-mean baseline's 1.432 (ratio 0.755) and val MCD 47.8 against
68.1 dB (step 400: 1.138 / 51.5).
"""

from __future__ import annotations

from fmjax.models.token_unet import TokenUNetConfig
from fmjax.models.unet import UNetConfig
from train.config import Config, OptimConfig, TrainConfig
from train.corpus_experiment import CorpusData
from train.experiments.matcha_decoder import ModelConfig

PRESETS = ("tiny", "default")


def get_config(preset: str = "tiny") -> Config:
    """The ``tiny`` (minutes on a CPU) or ``default`` (Matcha-TTS's decoder size) preset."""
    if preset == "tiny":
        unet = UNetConfig(spk_dim=64, cond_dim=80, channels=(64, 64), n_blocks=1, num_mid_blocks=1, num_heads=2,
                          head_dim=32)
        return Config(
            experiment="matcha_decoder",
            model=ModelConfig(net=TokenUNetConfig(embed_dim=64, unet=unet)),
            data=CorpusData(buckets=(64, 90), eval_sentences=8),
            optim=OptimConfig(lr=3e-3, warmup_steps=50, ema_decay=0.98),
            train=TrainConfig(steps=800, batch_size=16, log_every=25, eval_every=200, ckpt_every=400,
                              keep_checkpoints=2),
        )
    if preset == "default":
        return Config(
            experiment="matcha_decoder",
            model=ModelConfig(),
            data=CorpusData(buckets=(48, 64, 90), eval_sentences=32),
            optim=OptimConfig(lr=1e-4, warmup_steps=500, ema_decay=0.999),
            train=TrainConfig(steps=20000, batch_size=32, log_every=100, eval_every=2000, ckpt_every=2000),
        )
    raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
