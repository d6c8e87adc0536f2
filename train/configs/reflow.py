"""reflow (config; the experiment is :mod:`train.experiments.reflow`): the 2-rectified flow of a trained token2mel (Liu et al., "Flow Straight and Fast") on fixed couplings.

    python -m train --config train/configs/token2mel.py --preset tiny --workdir /tmp/reflow_teacher
    python -m train --config train/configs/reflow.py --preset tiny --workdir /tmp/reflow \\
        --set reflow.teacher=/tmp/reflow_teacher

1. **Couplings** (on the first data access; resumable). Every training and validation utterance (``reflow.copies``
   times) gets fresh noise ``x0`` and a prompt condition drawn as in the teacher's training (with probability
   ``prompt_prob`` its own first ``U{0..⌊prompt_max_frac·len⌋}`` ground-truth frames, else none); the teacher (its
   EMA parameters, full-context masks) integrates ``x0`` to ``x̂1`` with ``reflow.sampler`` (grid, steps, solver, CFG). Shards of ``shard_size`` utterances of one length bucket (padded to the bucket, as in
   training) hold ``x0, x1, tokens, token_len, spk, prompt, prompt_len, mel_mask, index`` in a
   :class:`fmjax.reflow.CouplingStore` (``train/`` and ``valid/``) at ``reflow.couplings``, by default
   ``<teacher>/couplings/<digest of the settings>``: the couplings belong to the teacher, so several students
   (reflow, distillation) share them. (The trainer gives an experiment no hook to see its workdir before the data
   is read, hence not under the student's workdir.) An interrupted generation resumes where it stopped.
2. **Student**: the teacher's architecture, initialised from the teacher's EMA parameters, trained (encoder and
   estimator) with the CFM loss on the rectified path between the stored ``x0`` and ``x̂1`` (``CondOTPath(0)``:
   ``x_t = (1 − t)·x0 + t·x̂1``, target ``x̂1 − x0``), the stored prompt and speaker conditions, the frame mask,
   full-context attention. Guidance is in the couplings, so the student is evaluated without CFG
   (``reflow.student_cfg``) and trained without condition dropout (``reflow.cfg_rate``). ``reflow.distill_steps=k``
   trains only at the times of a k-step linear grid (:class:`fmjax.reflow.GridT`; ``k = 1``: one-step distillation,
   use ``data.sampler.grid=linear``).
3. **Evaluation** (every ``train.eval_every`` and at the end): :meth:`CorpusExperiment.evaluate`'s metrics (val
   mel L1 / MCD on ``data.eval_sentences`` validation sentences with their prompts, CosyVoice's fixed noise, grid
   ``data.sampler.grid``) for the student and the teacher (with its CFG ``data.sampler.cfg_weight``) at every step count in
   ``reflow.eval_steps``, plus the straightness ``S`` (:func:`fmjax.reflow.straightness`, masked) of both on the
   same sentences; logged and written to ``<workdir>/reflow_report.json``.

Measured (tiny, this 2-core CPU shared with other jobs): the token2mel tiny teacher (800 steps, 11.5 min; its own
evaluation at step 800: val mel L1 1.123 on 8 sentences); 576 + 64 couplings (2 per utterance, 32-step cosine
Euler, CFG 0.7) in 50 s; the student 400 steps in 13.8 min. All 32 validation sentences, cosine grid, Euler,
CosyVoice's fixed noise; teacher with CFG 0.7 (two estimator rows per step), student without CFG; speaker-mean
baseline mel L1 1.436 / MCD 68.7:

=====  ======================  ======================
steps  teacher mel L1 / MCD    student mel L1 / MCD
=====  ======================  ======================
1      1.462 / 65.3            1.128 / 51.6
2      1.179 / 53.6            1.129 / 51.7
4      1.138 / 52.3            1.130 / 51.7
10     1.132 / 51.9            1.131 / 51.8
=====  ======================  ======================

Straightness S on the same sentences (16 Euler steps, valid frames): teacher 0.120, student 0.0022 (55x
straighter). At 2 steps the student beats the teacher (1.129 vs 1.179 mel L1); at 1 step it matches the teacher's
10 steps. (At step 200 it was already 1.128 / 1.129 / 1.131 / 1.132, S 0.0030.)

One-step distillation on the same couplings (``--set reflow.distill_steps=1 --set data.sampler.grid=linear --set
train.steps=200``, 6 min; no new couplings): student mel L1 at 1 / 2 / 4 / 10 linear steps 1.128 / 1.143 / 1.164 /
1.184 (trained at t = 0 only, so more steps do not help), teacher on the linear grid 1.462 / 1.265 / 1.173 / 1.137.
"""

from __future__ import annotations

import dataclasses

from train.config import OptimConfig, TrainConfig
from train.configs import token2mel as token2mel_config
from train.experiments.reflow import ReflowConfig, ReflowModel, ReflowSettings

PRESETS = ("tiny", "default")


def get_config(preset: str = "tiny") -> ReflowConfig:
    """``tiny``: a 400-step student of the token2mel tiny teacher, 2 couplings per utterance; ``default``: 4000
    steps, 4 couplings per utterance, for the token2mel default teacher."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {preset!r}")
    base = token2mel_config.get_config(preset)
    data = dataclasses.replace(base.data, eval_sentences=32)  # every validation utterance
    if preset == "tiny":
        return ReflowConfig(
            experiment="reflow", model=ReflowModel(base.model.flow), data=data,
            optim=OptimConfig(lr=1e-3, warmup_steps=20, ema_decay=0.98),
            train=TrainConfig(steps=400, batch_size=16, log_every=25, eval_every=200, ckpt_every=200,
                              keep_checkpoints=2),
            reflow=ReflowSettings(copies=2),
        )
    return ReflowConfig(
        experiment="reflow", model=ReflowModel(base.model.flow), data=data,
        optim=OptimConfig(lr=2e-4, warmup_steps=200, ema_decay=0.999),
        train=TrainConfig(steps=4000, batch_size=32, log_every=100, eval_every=1000, ckpt_every=1000),
        reflow=ReflowSettings(copies=4),
    )
