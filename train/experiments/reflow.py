"""The reflow experiment: the 2-rectified flow (or a k-step distillation) of a trained token2mel flow on fixed
teacher couplings. The procedure and its measured results are described in ``train/configs/reflow.py``; the
couplings and batches are :mod:`train.experiments.reflow_couplings`."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp

from fmjax.ablate import parse_t_sampler
from fmjax.checkpoint import load_teacher
from fmjax.loss import CFMLoss, LossDraws
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
from fmjax.paths import CondOTPath
from fmjax.pipelines.common import flow_condition, flow_source, flow_velocity
from fmjax.reflow import GridT, straightness
from fmjax.samplers import SamplerConfig
from fmjax.token2mel import token2mel
from train.config import Config
from train.corpus_experiment import CorpusExperiment
from train.experiments.reflow_couplings import CouplingData
from train.files import atomic_write_text

__all__ = ["ReflowSettings", "ReflowModel", "ReflowConfig", "Reflow"]


@dataclasses.dataclass(frozen=True)
class ReflowSettings:
    """Teacher, couplings, student objective and evaluation.

    Attributes:
      teacher: a token2mel trainer workdir (its ``config.json`` and newest checkpoint's EMA parameters).
      couplings: the coupling directory ("" = ``<teacher>/couplings/<settings digest>``).
      sampler: the teacher's sampler for ``x̂1`` (grid, steps, solver; CFG by batch doubling).
      copies: couplings per utterance (each with its own noise and prompt draw).
      shard_size: utterances per shard (one compiled teacher sampler per length bucket).
      prompt_prob, prompt_max_frac: the prompt conditions of the couplings, drawn as in the teacher's training.
      seed: noise and prompt draws (shard ``i`` of split ``s`` uses ``fold_in(fold_in(key(seed), s), i)``).
      t_sampler: the student's training times (:func:`fmjax.ablate.parse_t_sampler` names).
      distill_steps: 0 = reflow; ``k >= 1`` = k-step distillation (times of a k-step linear grid only).
      cfg_rate: the student's condition dropout (0: guidance is already in the couplings).
      student_cfg: the student's guidance weight at evaluation.
      eval_steps: ODE step counts at which teacher and student are evaluated.
      straightness_steps: Euler steps of the straightness estimate.
    """

    teacher: str = ""
    couplings: str = ""
    sampler: SamplerConfig = SamplerConfig(n_steps=32)
    copies: int = 2
    shard_size: int = 16
    prompt_prob: float = 0.5
    prompt_max_frac: float = 0.3
    seed: int = 0
    t_sampler: str = "uniform"
    distill_steps: int = 0
    cfg_rate: float = 0.0
    student_cfg: float = 0.0
    eval_steps: tuple[int, ...] = (1, 2, 4, 10)
    straightness_steps: int = 16

    def __post_init__(self):
        for name in ("copies", "shard_size", "straightness_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"reflow.{name}: expected an int >= 1, got {getattr(self, name)!r}")
        for name in ("seed", "distill_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"reflow.{name}: expected an int >= 0, got {getattr(self, name)!r}")
        if self.student_cfg < 0:
            raise ValueError(f"reflow.student_cfg: expected a guidance weight >= 0, got {self.student_cfg!r}")
        if not self.eval_steps or any(not isinstance(n, int) or n < 1 for n in self.eval_steps):
            raise ValueError(f"reflow.eval_steps: expected ints >= 1, got {self.eval_steps!r}")
        try:
            parse_t_sampler(self.t_sampler)
            CFMLoss(cfg_rate=self.cfg_rate, prompt_prob=self.prompt_prob, prompt_max_frac=self.prompt_max_frac)
        except (ValueError, KeyError) as e:
            raise ValueError(f"reflow: {e}") from None

    def student_loss(self) -> CFMLoss:
        """The student's CFM loss on the rectified path (the stored prompt is kept: ``prompt_prob`` 0 here)."""
        t_sampler = GridT(self.distill_steps) if self.distill_steps else parse_t_sampler(self.t_sampler)
        return CFMLoss(path=CondOTPath(0.0), t_sampler=t_sampler, cfg_rate=self.cfg_rate)


@dataclasses.dataclass(frozen=True)
class ReflowModel:
    """The student's flow: replaced by the teacher's (its ``config.json``) when ``reflow.teacher`` is set."""

    flow: Token2MelConfig = Token2MelConfig(vocab_size=256)


@dataclasses.dataclass(frozen=True)
class ReflowConfig(Config):
    """:class:`train.config.Config` with the ``reflow`` section."""

    reflow: ReflowSettings = ReflowSettings()


@functools.partial(jax.jit, static_argnames=("model", "sampler", "n_steps"))
def _straightness(params, x0, cond, *, model, sampler: SamplerConfig, n_steps: int):
    velocity = sampler.guided(flow_velocity(model, params))
    return straightness(velocity, x0, cond, n_steps=n_steps, mask=cond.mask)[0]


class Reflow(CouplingData, CorpusExperiment):
    """The student on coupling batches (``x0, x1, tokens, token_len, spk, prompt, row_mask``); see the config's
    docstring. Without ``reflow.teacher`` it builds (fresh parameters) but has no data."""

    def __init__(self, config: ReflowConfig):
        rc = config.reflow
        self.teacher_params, self.teacher_step = None, None
        if rc.teacher:
            teacher = load_teacher(rc.teacher, ema=True, what="reflow.teacher")
            self.teacher_params, self.teacher_step = teacher.params, teacher.step
            config = dataclasses.replace(config, model=ReflowModel(teacher.model.config))
        if rc.distill_steps and config.data.sampler.grid != "linear":
            raise ValueError(f"data.sampler.grid: k-step distillation (reflow.distill_steps={rc.distill_steps}) trains "
                             f"on a linear grid; expected 'linear', got {config.data.sampler.grid!r}")
        super().__init__(config)
        self.check_model_config(config.model.flow.vocab_size, config.model.flow.spk_embed_dim)
        self.model = CosyVoice2Flow(config.model.flow)
        self.loss = rc.student_loss()
        self._loaded: dict[str, list[dict]] = {}
        self._teacher_eval = None
        self._epoch = (None, None)

    def init_params(self, key):
        if self.teacher_params is None:
            return init_flow_params(self.model, key)
        return jax.tree.map(jnp.asarray, self.teacher_params)

    def loss_fn(self, params, batch, key):
        cond = flow_condition(self.model, params, batch["tokens"], batch["token_len"], batch["spk"],
                              prompt=batch["prompt"])
        loss, aux = self.loss(flow_velocity(self.model, params), batch["x1"], cond.mask, cond, key,
                              draws=LossDraws(z=flow_source(self.model.config, batch["x0"], cond.mu)))
        return loss, {"per_example": aux["per_example"], "t": aux["t"], "weight": batch["row_mask"]}

    # ------------------------------------------------------------------------------------------ evaluation
    def generate(self, params, **sampler):
        """:meth:`CorpusExperiment.generate` with the student's guidance weight as the default."""
        return super().generate(params, **({"cfg_weight": self.config.reflow.student_cfg} | sampler))

    def valid_straightness(self, params, cfg_weight: float) -> float:
        """Straightness ``S`` of the (guided) flow on the evaluation sentences: their prompts and conditions as in
        :meth:`generate`, CosyVoice's fixed noise, ``reflow.straightness_steps`` Euler steps, valid frames only."""
        aux = token2mel(self.model, params, **self.generation_inputs(), n_steps=1, cfg_weight=0.0,
                        return_aux=True).aux
        from fmjax.cond import MelCond

        cond = MelCond(aux["mu"], aux["spks"], aux["prompt"], aux["mask"])
        x0 = flow_source(self.model.config, aux["noise"], aux["mu"])  # the flow's source (pure noise by default)
        return float(_straightness(params, x0, cond, model=self.model,
                                   sampler=SamplerConfig("linear", 1, "euler", float(cfg_weight)),
                                   n_steps=self.config.reflow.straightness_steps))

    def compare(self, params) -> dict:
        """Teacher (``data.sampler.cfg_weight``) and student (``reflow.student_cfg``) scores at every
        ``reflow.eval_steps`` and their straightness (the teacher's computed once)."""
        rc, cfg_w = self.config.reflow, self.config.data.sampler.cfg_weight
        if self._teacher_eval is None and self.teacher_params is not None:
            p = self.teacher_params
            self._teacher_eval = {
                "scores": {n: self.score(self.generate(p, n_steps=n, cfg_weight=cfg_w)[0]) for n in rc.eval_steps},
                "straightness": self.valid_straightness(p, cfg_w)}
        student = {"scores": {n: self.score(self.generate(params, n_steps=n)[0]) for n in rc.eval_steps},
                   "straightness": self.valid_straightness(params, rc.student_cfg)}
        return {"student": student, "teacher": self._teacher_eval}

    def evaluate(self, params, step, workdir):
        out = super().evaluate(params, step, workdir)
        report = self.compare(params)
        for who in ("student", "teacher"):
            if report[who] is None:
                continue
            prefix = "" if who == "student" else "teacher_"
            out[f"{prefix}straightness"] = report[who]["straightness"]
            for n, s in report[who]["scores"].items():
                for key, value in s.items():
                    if key.startswith("val_") and not key.endswith(("baseline", "lookup", "ratio")):
                        out[f"{prefix}{key}_steps{n}"] = value
        if workdir is not None and jax.process_index() == 0:
            ds = self.config.data.sampler
            record = {"step": step, "grid": ds.grid, "solver": ds.solver, "teacher_cfg": ds.cfg_weight,
                      "student_cfg": self.config.reflow.student_cfg, **report}
            atomic_write_text(pathlib.Path(workdir) / "reflow_report.json", json.dumps(record, indent=2) + "\n")
        return out
