"""reflow: the 2-rectified flow of a trained token2mel (Liu et al., "Flow Straight and Fast") on fixed couplings.

    python -m train --config train/configs/token2mel.py --preset tiny --workdir /tmp/reflow_teacher
    python -m train --config train/configs/reflow.py --preset tiny --workdir /tmp/reflow \\
        --set reflow.teacher=/tmp/reflow_teacher

1. **Couplings** (on the first data access; resumable). Every training and validation utterance (``reflow.copies``
   times) gets fresh noise ``x0`` and a prompt condition drawn as in the teacher's training (with probability
   ``prompt_prob`` its own first ``U{0..⌊prompt_max_frac·len⌋}`` ground-truth frames, else none); the teacher (its
   EMA parameters, full-context masks) integrates ``x0`` to ``x̂1`` with ``reflow.grid/n_steps/solver`` and CFG
   ``reflow.cfg_weight``. Shards of ``shard_size`` utterances of one length bucket (padded to the bucket, as in
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
   use ``data.grid=linear``).
3. **Evaluation** (every ``train.eval_every`` and at the end): :meth:`CorpusExperiment.evaluate`'s metrics (val
   mel L1 / MCD on ``data.eval_sentences`` validation sentences with their prompts, CosyVoice's fixed noise, grid
   ``data.grid``) for the student and the teacher (with its CFG ``data.cfg_weight``) at every step count in
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

One-step distillation on the same couplings (``--set reflow.distill_steps=1 --set data.grid=linear --set
train.steps=200``, 6 min; no new couplings): student mel L1 at 1 / 2 / 4 / 10 linear steps 1.128 / 1.143 / 1.164 /
1.184 (trained at t = 0 only, so more steps do not help), teacher on the linear grid 1.462 / 1.265 / 1.173 / 1.137.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.ablate import parse_t_sampler
from fmjax.cond import MelCond
from fmjax.data.batching import collate
from fmjax.loss import CFMLoss, LossDraws, prompt_prefix
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
from fmjax.paths import CondOTPath
from fmjax.reflow import CouplingStore, GridT, generate_couplings, straightness
from fmjax.samplers import classifier_free_guidance, get_solver
from fmjax.timesteps import time_grid
from fmjax.token2mel import token2mel
from train.config import Config, OptimConfig, TrainConfig
from train.configs import token2mel as token2mel_config
from train.corpus_experiment import CorpusExperiment
from train.files import atomic_write_text

__all__ = ["PRESETS", "ReflowSettings", "ReflowModel", "ReflowConfig", "Reflow", "get_config", "build",
           "flow_cond", "teacher_couplings"]

log = logging.getLogger(__name__)

PRESETS = ("tiny", "default")
SPLITS = ("train", "valid")
COUPLING_KEYS = ("x0", "x1", "tokens", "token_len", "spk", "prompt", "prompt_len", "mel_mask", "index")
BATCH_KEYS = ("x0", "x1", "tokens", "token_len", "spk", "prompt", "row_mask")


@dataclasses.dataclass(frozen=True)
class ReflowSettings:
    """Teacher, couplings, student objective and evaluation.

    Attributes:
      teacher: a token2mel trainer workdir (its ``config.json`` and newest checkpoint's EMA parameters).
      couplings: the coupling directory ("" = ``<teacher>/couplings/<settings digest>``).
      grid, n_steps, solver, cfg_weight: the teacher's sampler for ``x̂1`` (CFG by batch doubling).
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
    grid: str = "cosine"
    n_steps: int = 32
    solver: str = "euler"
    cfg_weight: float = 0.7
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
        for name in ("n_steps", "copies", "shard_size", "straightness_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"reflow.{name}: expected an int >= 1, got {getattr(self, name)!r}")
        for name in ("seed", "distill_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"reflow.{name}: expected an int >= 0, got {getattr(self, name)!r}")
        for name in ("cfg_weight", "student_cfg"):
            if getattr(self, name) < 0:
                raise ValueError(f"reflow.{name}: expected a guidance weight >= 0, got {getattr(self, name)!r}")
        if not self.eval_steps or any(not isinstance(n, int) or n < 1 for n in self.eval_steps):
            raise ValueError(f"reflow.eval_steps: expected ints >= 1, got {self.eval_steps!r}")
        try:
            time_grid(self.grid, self.n_steps)
            get_solver(self.solver)
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


# ------------------------------------------------------------------------------------------- flow closures
def flow_cond(model, params, tokens, token_len, spk, prompt) -> MelCond:
    """The estimator's conditions of padded rows: ``mu, mask`` from the encoder (full context, ``[b, r·u, m]``,
    ``[b, r·u]``), the projected speaker, and ``prompt [b, r·u, m]`` as given."""
    spks = model.apply(params, spk, method="speaker")  # [b, spk_dim]
    mu, mask = model.apply(params, tokens, token_len, method="encode")  # [b, T, m], [b, T]
    return MelCond(mu, spks, prompt, mask)


def _velocity(model, params):
    return lambda t, x, c: model.apply(params, x, c, t, method="estimate")[0]


@functools.partial(jax.jit, static_argnames=("model", "draw_loss", "solver", "cfg_weight"))
def teacher_couplings(params, batch: dict, key, grid, *, model, draw_loss: CFMLoss, solver: str, cfg_weight: float):
    """One shard's couplings: noise ``x0`` and prompt lengths drawn by ``draw_loss.draw`` (as in training), the
    prompt = the rows' own first ``prompt_len`` ground-truth frames, ``x1`` = the teacher's guided ODE sample.

    Args:
      batch: ``tokens [b, u]``, ``token_len [b]``, ``spk [b, s]``, ``mel [b, T, m]``, ``mel_mask [b, T]``.

    Returns:
      ``(x0 [b, T, m], x1 [b, T, m], prompt [b, T, m], prompt_len [b])``.
    """
    draws = draw_loss.draw(key, batch["mel"], batch["mel_mask"])
    prompt = jax.vmap(prompt_prefix)(batch["mel"], draws.prompt_len)  # [b, T, m]
    cond = flow_cond(model, params, batch["tokens"], batch["token_len"], batch["spk"], prompt)
    x1 = generate_couplings(_velocity(model, params), draws.z, cond, grid, solver, cfg_weight=cfg_weight)
    return draws.z, x1, prompt, draws.prompt_len


@functools.partial(jax.jit, static_argnames=("model", "cfg_weight", "n_steps"))
def _straightness(params, x0, cond, *, model, cfg_weight: float, n_steps: int):
    velocity = _velocity(model, params)
    if cfg_weight:
        velocity = classifier_free_guidance(velocity, cfg_weight)
    return straightness(velocity, x0, cond, n_steps=n_steps, mask=cond.mask)[0]


# ---------------------------------------------------------------------------------------------- experiment
class Reflow(CorpusExperiment):
    """The student on coupling batches (``x0, x1, tokens, token_len, spk, prompt, row_mask``); see the module
    docstring. Without ``reflow.teacher`` it builds (fresh parameters) but has no data."""

    def __init__(self, config: ReflowConfig):
        rc = config.reflow
        self.teacher_params, self.teacher_step = None, None
        if rc.teacher:
            from fmjax.cli import load_flow

            try:
                teacher, self.teacher_params = load_flow(rc.teacher, ema=True)
            except (FileNotFoundError, ValueError) as e:
                raise ValueError(f"reflow.teacher: expected a token2mel trainer workdir, got {rc.teacher!r} "
                                 f"({e})") from None
            self.teacher_step = max(int(p.name) for p in (pathlib.Path(rc.teacher) / "checkpoints").iterdir()
                                    if p.name.isdigit())
            config = dataclasses.replace(config, model=ReflowModel(teacher.config))
        if rc.distill_steps and config.data.grid != "linear":
            raise ValueError(f"data.grid: k-step distillation (reflow.distill_steps={rc.distill_steps}) trains on a "
                             f"linear grid; expected 'linear', got {config.data.grid!r}")
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

    # ------------------------------------------------------------------------------------------ couplings
    def settings(self) -> dict:
        """What the couplings depend on (the store's manifest; the default directory is named by its digest)."""
        rc, dc = self.config.reflow, self.config.data
        return {"teacher": str(pathlib.Path(rc.teacher).resolve()), "teacher_step": self.teacher_step,
                "corpus": dc.corpus or "shipped", "buckets": list(dc.buckets), "grid": rc.grid,
                "n_steps": rc.n_steps, "solver": rc.solver, "cfg_weight": rc.cfg_weight, "copies": rc.copies,
                "shard_size": rc.shard_size, "prompt_prob": rc.prompt_prob, "prompt_max_frac": rc.prompt_max_frac,
                "seed": rc.seed}

    def store(self, split: str) -> CouplingStore:
        """The coupling store of ``split`` (``train`` or ``valid``)."""
        rc = self.config.reflow
        if not rc.teacher:
            raise ValueError("reflow.teacher: expected a token2mel trainer workdir (--set reflow.teacher=DIR) to "
                             "generate couplings, got ''")
        digest = hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:10]
        root = pathlib.Path(rc.couplings) if rc.couplings else pathlib.Path(rc.teacher) / "couplings" / digest
        return CouplingStore(root / split)

    def plan(self, split: str) -> list[tuple[int, list[int]]]:
        """``(bucket tokens, utterance indices)`` of every shard of ``split``: ``copies`` rounds, each the split's
        utterances by bucket in corpus order, cut into ``shard_size`` pieces. Longer utterances are left out."""
        rc, buckets = self.config.reflow, self.config.data.buckets
        utts = self.corpus.train if split == "train" else self.corpus.valid
        which = np.searchsorted(np.asarray(buckets), [u.tokens.shape[0] for u in utts], side="left")
        if (which == len(buckets)).any():
            log.warning("%d %s utterances are longer than the last bucket (%d tokens): no couplings",
                        int((which == len(buckets)).sum()), split, buckets[-1])
        one = [(buckets[k], members[i: i + rc.shard_size])
               for k in range(len(buckets)) for members in [list(np.flatnonzero(which == k))]
               for i in range(0, len(members), rc.shard_size)]
        return [(w, [int(i) for i in idx]) for _ in range(rc.copies) for w, idx in one]

    def make_shard(self, split: str, i: int) -> dict[str, np.ndarray]:
        """Shard ``i`` of ``split`` (a pure function of ``i``): padded to ``shard_size`` rows for the sampler's
        one compilation per bucket, the filler rows dropped before storing."""
        rc = self.config.reflow
        width, idx = self.plan(split)[i]
        utts = self.corpus.train if split == "train" else self.corpus.valid
        b = collate(utts, idx + [idx[0]] * (rc.shard_size - len(idx)), width)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(rc.seed), SPLITS.index(split)), i)
        inputs = {"tokens": b.tokens, "token_len": b.token_len, "spk": b.spk, "mel": b.mel, "mel_mask": b.mel_mask}
        draw_loss = CFMLoss(prompt_prob=rc.prompt_prob, prompt_max_frac=rc.prompt_max_frac)
        x0, x1, prompt, prompt_len = teacher_couplings(
            self.teacher_params, inputs, key, jnp.asarray(time_grid(rc.grid, rc.n_steps), jnp.float32),
            model=self.model, draw_loss=draw_loss, solver=rc.solver, cfg_weight=float(rc.cfg_weight))
        n = len(idx)
        out = {"x0": x0, "x1": x1, "tokens": b.tokens, "token_len": b.token_len, "spk": b.spk, "prompt": prompt,
               "prompt_len": prompt_len, "mel_mask": b.mel_mask, "index": np.asarray(idx, np.int32)}
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def couplings(self, split: str, *, progress: bool = True) -> list[dict]:
        """The couplings of ``split``, generated where missing, as one dict of arrays per bucket width."""
        if split not in self._loaded:
            store, n = self.store(split), len(self.plan(split))
            store.generate(functools.partial(self.make_shard, split), n, self.settings() | {"split": split},
                           progress=progress)
            groups: dict[int, list[dict]] = {}
            for i in range(n):
                shard = store.load_shard(i)
                groups.setdefault(shard["x0"].shape[1], []).append(shard)
            self._loaded[split] = [{k: np.concatenate([s[k] for s in g]) for k in COUPLING_KEYS}
                                   for _, g in sorted(groups.items())]
        return self._loaded[split]

    # ------------------------------------------------------------------------------------------------ data
    @staticmethod
    def _rows(group: dict, rows, row_mask=None) -> dict:
        batch = {k: group[k][rows] for k in BATCH_KEYS if k != "row_mask"}
        batch["row_mask"] = np.ones(len(rows), np.float32) if row_mask is None else row_mask
        return batch

    def _epoch_batches(self, groups, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
        """``(group, rows)`` of every batch of an epoch: each group shuffled with ``(seed, epoch)`` and cut into
        full batches (the remainder sits out), the batches shuffled."""
        if self._epoch[0] != (seed, epoch):
            rng, b = np.random.default_rng([seed, epoch]), self.config.train.batch_size
            batches = [(g, perm[i: i + b]) for g, group in enumerate(groups)
                       for perm in [rng.permutation(group["x0"].shape[0])] for i in range(0, len(perm) - b + 1, b)]
            self._epoch = ((seed, epoch), [batches[j] for j in rng.permutation(len(batches))])
        return self._epoch[1]

    def train_batches(self, seed: int, position: int):
        groups = self.couplings("train")
        self.couplings("valid")  # all generation before the first step
        b = self.config.train.batch_size
        per_epoch = sum(g["x0"].shape[0] // b for g in groups)
        if per_epoch == 0:
            raise ValueError(f"train.batch_size: no length bucket holds {b} couplings "
                             f"(have {[g['x0'].shape[0] for g in groups]}); use a smaller batch or more copies")
        while True:
            epoch, k = divmod(position, per_epoch)
            g, rows = self._epoch_batches(groups, seed, epoch)[k]
            position += 1
            yield self._rows(groups[g], rows), position

    def eval_batches(self):
        b, out = self.config.train.batch_size, []
        for group in self.couplings("valid"):
            n = group["x0"].shape[0]
            for first in range(0, n, b):
                rows = np.arange(first, min(first + b, n))
                mask = (np.arange(b) < len(rows)).astype(np.float32)
                out.append(self._rows(group, np.concatenate([rows, np.full(b - len(rows), first)]), mask))
        return out

    def loss_fn(self, params, batch, key):
        cond = flow_cond(self.model, params, batch["tokens"], batch["token_len"], batch["spk"], batch["prompt"])
        loss, aux = self.loss(_velocity(self.model, params), batch["x1"], cond.mask, cond, key,
                              draws=LossDraws(z=batch["x0"]))
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
        cond = MelCond(aux["mu"], aux["spks"], aux["prompt"], aux["mask"])
        return float(_straightness(params, aux["noise"], cond, model=self.model, cfg_weight=float(cfg_weight),
                                   n_steps=self.config.reflow.straightness_steps))

    def compare(self, params) -> dict:
        """Teacher (``data.cfg_weight``) and student (``reflow.student_cfg``) scores at every ``reflow.eval_steps``
        and their straightness (the teacher's computed once)."""
        rc, dc = self.config.reflow, self.config.data
        if self._teacher_eval is None and self.teacher_params is not None:
            p = self.teacher_params
            self._teacher_eval = {
                "scores": {n: self.score(self.generate(p, n_steps=n, cfg_weight=dc.cfg_weight)[0])
                           for n in rc.eval_steps},
                "straightness": self.valid_straightness(p, dc.cfg_weight)}
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
                out[f"{prefix}val_mel_l1_steps{n}"] = s["val_mel_l1"]
                out[f"{prefix}val_mcd_steps{n}"] = s["val_mcd"]
        if workdir is not None and jax.process_index() == 0:
            record = {"step": step, "grid": self.config.data.grid, "solver": self.config.data.solver,
                      "teacher_cfg": self.config.data.cfg_weight, "student_cfg": self.config.reflow.student_cfg,
                      **report}
            atomic_write_text(pathlib.Path(workdir) / "reflow_report.json", json.dumps(record, indent=2) + "\n")
        return out


def build(config: ReflowConfig) -> Reflow:
    """The experiment for a resolved config."""
    return Reflow(config)
