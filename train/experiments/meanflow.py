"""The MeanFlow experiment: a few-step student of a trained token2mel flow (:mod:`fmjax.meanflow`), fine-tuned from the
teacher's parameters with the MeanFlow loss, classifier-free guidance folded in, the encoder and speaker layers
frozen. The procedure and its measured results are in ``train/configs/meanflow.py``.

**Freezing.** The conditions (speaker projection, token encoder -> ``mu``) are computed under
``jax.lax.stop_gradient``, so the gradients of every encoder and speaker parameter are exactly zero; with the
optimizer's weight decay at 0 (required, checked) AdamW's update of a leaf with zero gradients is exactly zero, so
those parameters stay bit-identical to the teacher's (tested), and no backward pass runs through the encoder. (An
``optax.multi_transform`` with ``set_to_zero`` would do the same but compute the encoder's gradients first.)
Only the estimator -- including its new, zero-initialised second time embedding -- trains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fmjax.checkpoint import load_flow
from fmjax.meanflow import IntervalSampler, MeanFlowLoss, student_config, student_params
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
from fmjax.paths import CondOTPath
from fmjax.pipelines.common import flow_condition, flow_source, flow_velocity, has_default_source
from fmjax.pipelines.training import UnifiedChunks
from fmjax.timesteps import LogitNormal
from train.config import Config
from train.corpus_experiment import CorpusExperiment

__all__ = ["MeanFlowSettings", "MeanFlowModel", "MeanFlowConfig", "MeanFlow"]


@dataclasses.dataclass(frozen=True)
class MeanFlowSettings:
    """The teacher, the MeanFlow objective and the evaluation.

    Attributes:
      teacher: a token2mel trainer workdir or a flow checkpoint (:func:`fmjax.checkpoint.load_flow`, EMA params).
      sigma_min: the path's minimum noise (the teacher's CosyVoice ``1e-6``).
      t_mean, t_std: the logit-normal of the ``(t, r)`` draws (our direction: ``+0.4`` = the paper's ``−0.4``).
      neq_ratio: share of rows with ``r ≠ t`` (the paper: 0.25).
      cfg_rate: condition dropout (the teacher's 0.2).
      cfg_scale, cfg_mix: ``ω`` and ``κ`` of the folded guidance; the student's effective CosyVoice weight is
        ``ω / (1 − κ) − 1`` (defaults: 0.85, 0.5 -> 0.7, the teacher's inference CFG).
      adaptive_p, adaptive_c: the adaptive loss weight ``(e + c)^−p``.
      prompt_prob, prompt_max_frac: the prompt prefix, as the teacher's training.
      chunk_prob: share of chunk-masked rows (the teacher's unified training: the student streams).
      freeze_encoder: stop gradients at the conditions (encoder and speaker layers frozen).
      eval_steps: the student's NFEs evaluated (``meanflow`` solver on ``data.sampler``'s grid, no CFG).
    """

    teacher: str = ""
    sigma_min: float = 1e-6
    t_mean: float = 0.4
    t_std: float = 1.0
    neq_ratio: float = 0.25
    cfg_rate: float = 0.2
    cfg_scale: float = 0.85
    cfg_mix: float = 0.5
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    prompt_prob: float = 0.5
    prompt_max_frac: float = 0.3
    chunk_prob: float = 0.5
    freeze_encoder: bool = True
    eval_steps: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if not self.eval_steps or any(not isinstance(n, int) or n < 1 for n in self.eval_steps):
            raise ValueError(f"meanflow.eval_steps: expected ints >= 1, got {self.eval_steps!r}")
        try:
            self.loss()
            UnifiedChunks(self.chunk_prob)
        except (ValueError, TypeError) as e:
            raise ValueError(f"meanflow: {e}") from None

    def loss(self) -> MeanFlowLoss:
        return MeanFlowLoss(
            path=CondOTPath(self.sigma_min), intervals=IntervalSampler(LogitNormal(self.t_mean, self.t_std),
                                                                       self.neq_ratio),
            cfg_rate=self.cfg_rate, prompt_prob=self.prompt_prob, prompt_max_frac=self.prompt_max_frac,
            cfg_scale=self.cfg_scale, cfg_mix=self.cfg_mix, adaptive_p=self.adaptive_p, adaptive_c=self.adaptive_c)


@dataclasses.dataclass(frozen=True)
class MeanFlowModel:
    """The student's flow: the teacher's config with ``estimator.mean_flow=True`` (set from ``meanflow.teacher``)."""

    flow: Token2MelConfig = student_config(Token2MelConfig(vocab_size=256))


@dataclasses.dataclass(frozen=True)
class MeanFlowConfig(Config):
    """:class:`train.config.Config` with the ``meanflow`` section."""

    meanflow: MeanFlowSettings = MeanFlowSettings()


class MeanFlow(CorpusExperiment):
    """The student on the corpus batches; evaluated at ``meanflow.eval_steps`` without CFG. Without a teacher it
    builds (fresh parameters) for tests of the plumbing only."""

    resume_safe_keys = CorpusExperiment.resume_safe_keys + ("meanflow.eval_steps",)

    def __init__(self, config: MeanFlowConfig):
        mc = config.meanflow
        self.teacher_params, self.teacher_step = None, None
        if mc.teacher:
            teacher = load_flow(mc.teacher, ema=True, what="meanflow.teacher")
            if not isinstance(teacher.model, CosyVoice2Flow):
                raise ValueError(f"meanflow.teacher: expected a CosyVoice2 flow, got {type(teacher.model).__name__}")
            self.teacher_params, self.teacher_step = teacher.params, teacher.step
            config = dataclasses.replace(config, model=MeanFlowModel(student_config(teacher.model.config, "meanflow.teacher")))
        if mc.freeze_encoder and config.optim.weight_decay != 0:
            raise ValueError(f"optim.weight_decay: a frozen encoder (meanflow.freeze_encoder) needs 0, or AdamW would "
                             f"decay the frozen parameters; got {config.optim.weight_decay}")
        s = config.data.sampler
        if s.cfg_weight != 0 or s.solver != "meanflow":
            raise ValueError(f"data.sampler: a MeanFlow student is evaluated with the meanflow solver and no CFG; "
                             f"expected solver='meanflow', cfg_weight=0, got {s.solver!r}, {s.cfg_weight}")
        super().__init__(config)
        self.check_model_config(config.model.flow.vocab_size, config.model.flow.spk_embed_dim)
        self.model = CosyVoice2Flow(config.model.flow)
        self.loss = mc.loss()
        self.chunks = UnifiedChunks(mc.chunk_prob)

    def init_params(self, key):
        if self.teacher_params is None:
            return init_flow_params(self.model, key)
        return student_params(self.model, self.teacher_params, key)

    def loss_fn(self, params, batch, key):
        mc = self.config.meanflow
        k_chunk, k_loss = jax.random.split(key)
        b, u = batch["tokens"].shape
        chunk = self.chunks.draw(k_chunk, b, self.model.config, u)
        cond = flow_condition(self.model, params, batch["tokens"], batch["token_len"], batch["spk"], chunk=chunk)
        if mc.freeze_encoder:
            cond = jax.lax.stop_gradient(cond)
        draws = None
        if not has_default_source(self.model.config):  # the teacher's source x0 = source_std·z + source_mu·mu
            draws = self.loss.draw(k_loss, batch["mel"], cond.mask)
            draws = draws._replace(z=flow_source(self.model.config, draws.z, cond.mu))
        loss, aux = self.loss(flow_velocity(self.model, params), batch["mel"], cond.mask, cond, k_loss, draws=draws)
        rows = batch["row_mask"]
        mse = jnp.sum(aux["per_example"] * rows) / jnp.maximum(jnp.sum(rows), 1.0)
        # the loss itself is ~1 by construction (adaptive weight p = 1: the gradient of log(e + c)); log the error
        return loss, {"per_example": aux["per_example"], "t": aux["t"], "weight": rows, "mse": mse,
                      "adaptive_weight": jnp.sum(aux["weight"] * rows) / jnp.maximum(jnp.sum(rows), 1.0)}

    def evaluate(self, params, step, workdir):
        out = super().evaluate(params, step, workdir)  # data.sampler's NFE
        base = dict(out)
        for n in self.config.meanflow.eval_steps:
            scores = base if n == self.config.data.sampler.n_steps else self.score(self.generate(params, n_steps=n)[0])
            out.update({f"{k}_steps{n}": v for k, v in scores.items()
                        if k.startswith("val_") and not k.endswith(("baseline", "lookup", "ratio", "truth"))})
        return out
