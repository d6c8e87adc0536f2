"""The matcha_decoder experiment: Matcha-TTS's non-causal U-Net as a token-to-mel flow
(:class:`fmjax.models.token_unet.TokenUNet`) on the speech corpus. Its config is ``train/configs/matcha_decoder.py``."""

from __future__ import annotations

import dataclasses

from fmjax.loss import CFMLoss
from fmjax.models.token_unet import TokenUNet, TokenUNetConfig
from fmjax.paths import CondOTPath
from fmjax.timesteps import Uniform
from train.experiments.token2mel import FlowLossExperiment

__all__ = ["ModelConfig", "MatchaDecoder"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model and its training loss: Matcha's path (sigma_min 1e-4), uniform t, plus CosyVoice's CFG dropout and
    prompt-prefix conditioning (Matcha itself has neither; they make prompted generation and CFG 0.7 meaningful).

    Attributes:
      net: :class:`fmjax.models.token_unet.TokenUNetConfig`.
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


class MatchaDecoder(FlowLossExperiment):
    """The U-Net flow on corpus batches with the CFM loss (full context: the flow is not causal)."""

    def __init__(self, config):
        super().__init__(config)
        net = config.model.net
        self.check_model_config(net.vocab_size, net.spk_embed_dim)
        self.model = TokenUNet(net)
        self.loss = config.model.loss()
