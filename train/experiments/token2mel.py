"""The token2mel experiment: CosyVoice2's causal flow (:class:`fmjax.models.flow.CosyVoice2Flow`) on the speech corpus,
trained with CosyVoice2's unified chunk/full loss (:func:`fmjax.pipelines.training.flow_loss`): the chunk masks are
data drawn per row (or per batch), one compiled train step. Its config is ``train/configs/token2mel.py``."""

from __future__ import annotations

import dataclasses

from fmjax.loss import CFMLoss
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
from fmjax.paths import CondOTPath
from fmjax.pipelines.training import DynamicChunks, UnifiedChunks, check_prior_weight, flow_loss
from fmjax.timesteps import get_t_sampler
from train.corpus_experiment import CorpusExperiment

__all__ = ["ModelConfig", "Token2Mel", "FlowLossExperiment"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The flow and its training loss (CosyVoice2's: uniform t, sigma 1e-6, CFG dropout 0.2, prompt prefix with
    probability 0.5 of up to 30 % of the frames, chunk masks for half of the rows).

    Attributes:
      flow: the flow's sizes (:class:`fmjax.models.flow.Token2MelConfig`); its vocabulary and speaker width must
        be the corpus's (256 and 192 for the shipped one).
      sigma_min, cfg_rate, prompt_prob, prompt_max_frac: :class:`fmjax.loss.CFMLoss`.
      t_sampler: training time sampler (:func:`fmjax.timesteps.get_t_sampler`; CosyVoice2: ``uniform``).
      chunk_prob: the share of chunk-masked rows (the flow's streaming chunks in encoder and estimator).
      chunk_per_row: draw the mode per row (True) or per batch (CosyVoice2's draw); either way one compiled step.
      dynamic_chunks: 0 = CosyVoice2's unified training; ``k > 0`` = WeNet's dynamic chunk training with chunks of
        up to ``k`` tokens (streaming then works at any chunk size up to ``k``).
      mel_norm: the flow's mel space (:func:`train.corpus_experiment.mel_statistics`): ``"none"`` (CosyVoice: raw
        log-mels), ``"global"`` (Matcha-TTS: ``(mel - mean) / std`` with one mean and std of the training mels)
        or ``"per_bin"``; the statistics come from the training split, and generated mels are de-normalised
        before scoring and vocoding.
      prior_weight: Matcha-TTS's prior loss on the encoder output ``mu`` (the squared error to the target mel, in
        the flow's mel space), added with this weight (:func:`fmjax.pipelines.training.flow_loss`); 0 =
        CosyVoice2's loss. It trains ``mu`` towards each token's mean frame, which the flow then refines.
    """

    flow: Token2MelConfig = Token2MelConfig(vocab_size=256)
    sigma_min: float = 1e-6
    cfg_rate: float = 0.2
    prompt_prob: float = 0.5
    prompt_max_frac: float = 0.3
    t_sampler: str = "uniform"
    chunk_prob: float = 0.5
    chunk_per_row: bool = True
    dynamic_chunks: int = 0
    mel_norm: str = "none"
    prior_weight: float = 0.0

    def __post_init__(self):
        if self.mel_norm not in ("none", "global", "per_bin"):
            raise ValueError(f"model.mel_norm: expected one of ('none', 'global', 'per_bin'), got {self.mel_norm!r}")
        if not 0.0 <= self.chunk_prob <= 1.0:
            raise ValueError(f"model.chunk_prob: expected a probability in [0, 1], got {self.chunk_prob!r}")
        if not (isinstance(self.dynamic_chunks, int) and self.dynamic_chunks >= 0):
            raise ValueError(f"model.dynamic_chunks: expected an int >= 0 (0 = unified training), got "
                             f"{self.dynamic_chunks!r}")
        check_prior_weight(self.prior_weight, "model.prior_weight")
        if self.sigma_min < 0:
            raise ValueError(f"model.sigma_min: expected a value >= 0, got {self.sigma_min!r}")
        try:
            self.loss()  # CFMLoss validates the probabilities, get_t_sampler the name
        except (ValueError, KeyError) as e:
            raise ValueError(f"model: {e}") from None

    def loss(self) -> CFMLoss:
        return CFMLoss(path=CondOTPath(self.sigma_min), t_sampler=get_t_sampler(self.t_sampler),
                       cfg_rate=self.cfg_rate, prompt_prob=self.prompt_prob, prompt_max_frac=self.prompt_max_frac)

    def chunks(self) -> UnifiedChunks | DynamicChunks:
        if self.dynamic_chunks:
            return DynamicChunks(max_chunk=self.dynamic_chunks, per_row=self.chunk_per_row)
        return UnifiedChunks(self.chunk_prob, per_row=self.chunk_per_row)


class FlowLossExperiment(CorpusExperiment):
    """A corpus experiment whose loss is :func:`fmjax.pipelines.training.flow_loss` of ``self.model`` (padding rows
    weighted 0); subclasses set ``model``, ``loss`` and ``chunks``."""

    chunks = None
    prior_weight = 0.0

    def init_params(self, key):
        return init_flow_params(self.model, key)

    def loss_fn(self, params, batch, key):
        if self.mel_stats is not None:
            batch = dict(batch, mel=self.normalize_mel(batch["mel"], batch["mel_mask"]))
        loss, aux = flow_loss(self.model, params, batch, key, loss=self.loss, chunks=self.chunks,
                              prior_weight=self.prior_weight)
        aux = {k: aux[k] for k in ("per_example", "t", "chunk_masked", "prior_loss") if k in aux}
        aux["weight"] = batch["row_mask"]
        return loss, aux


class Token2Mel(FlowLossExperiment):
    """The CosyVoice2 flow on corpus batches."""

    def __init__(self, config):
        super().__init__(config)
        mc = config.model
        self.check_model_config(mc.flow.vocab_size, mc.flow.spk_embed_dim)
        self.model = CosyVoice2Flow(mc.flow)
        self.loss = mc.loss()
        self.chunks = mc.chunks()
        self.prior_weight = float(mc.prior_weight)
