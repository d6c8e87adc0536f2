"""meanflow (config; the experiment is :mod:`train.experiments.meanflow`): a MeanFlow few-step student of a trained
token2mel flow (Geng et al., 2025; :mod:`fmjax.meanflow`).

    python -m train --config train/configs/token2mel.py --preset tiny --workdir /tmp/teacher
    python -m train --config train/configs/meanflow.py --preset tiny --workdir /tmp/meanflow \\
        --set meanflow.teacher=/tmp/teacher
    python -m fmjax.cli token2wav --flow /tmp/meanflow --utterance us_m5/015     # streams it: 2 steps, no CFG

1. **Student**: the teacher's flow with ``estimator.mean_flow=True`` -- one extra, zero-initialised time
   embedding of ``r − t`` -- initialised from the teacher's EMA parameters (so at step 0 it *is* the teacher, at
   every ``r``). The encoder and speaker layers are frozen (the conditions are computed under stop-gradient; see
   the experiment's docstring); the estimator trains.
2. **Objective**: :class:`fmjax.meanflow.MeanFlowLoss` on the corpus batches (the teacher's data, not teacher
   samples): ``(t, r)`` from a logit-normal (``meanflow.t_mean`` / ``t_std``), ``r ≠ t`` for ``neq_ratio`` of the
   rows; the jvp target; the adaptive weight; CFG folded in with ``ω = cfg_scale``, ``κ = cfg_mix`` (effective
   CosyVoice weight ``ω/(1 − κ) − 1 = 0.7``, the teacher's) and the teacher's condition dropout 0.2; the teacher's
   prompt prefix and unified chunk training (half the rows chunk-masked: the student streams).
3. **Evaluation**: the corpus metrics (:meth:`train.corpus_experiment.CorpusExperiment.score`) of the student
   sampled with the ``meanflow`` solver on a linear grid and **no CFG**, at ``data.sampler.n_steps`` (2) and every
   ``meanflow.eval_steps`` (logged as ``val_<metric>_steps<n>``).

The measured comparison with the teacher and a reflow student (``train/configs/reflow.py``) is
``benchmarks/students_corpus.py`` (table in its docstring and in the README).
"""

from __future__ import annotations

import dataclasses

from fmjax.meanflow import STUDENT_SAMPLER_FIELDS, student_config
from fmjax.samplers import SamplerConfig
from train.config import OptimConfig, TrainConfig
from train.configs import token2mel as token2mel_config
from train.experiments.meanflow import MeanFlowConfig, MeanFlowModel, MeanFlowSettings

PRESETS = ("tiny", "default")


def get_config(preset: str = "tiny") -> MeanFlowConfig:
    """``tiny``: a 400-step student of the token2mel tiny teacher; ``default``: 4000 steps for the default one."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
    base = token2mel_config.get_config(preset)
    data = dataclasses.replace(base.data, eval_sentences=32, sampler=SamplerConfig(**STUDENT_SAMPLER_FIELDS))
    model = MeanFlowModel(student_config(base.model.flow))
    if preset == "tiny":
        return MeanFlowConfig(
            experiment="meanflow", model=model, data=data,
            optim=OptimConfig(lr=5e-4, warmup_steps=20, ema_decay=0.98),
            train=TrainConfig(steps=400, batch_size=16, log_every=25, eval_every=200, ckpt_every=200,
                              keep_checkpoints=2),
            meanflow=MeanFlowSettings(),
        )
    return MeanFlowConfig(
        experiment="meanflow", model=model, data=data,
        optim=OptimConfig(lr=2e-4, warmup_steps=200, ema_decay=0.999),
        train=TrainConfig(steps=4000, batch_size=32, log_every=100, eval_every=1000, ckpt_every=1000),
        meanflow=MeanFlowSettings(),
    )
