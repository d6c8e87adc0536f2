"""The reflow experiment's data: teacher couplings ``(x0, x̂1)`` with their conditions, generated shard by shard into
a resumable :class:`fmjax.reflow.CouplingStore` and served as training / validation batches."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.data.batching import collate
from fmjax.loss import CFMLoss, prompt_prefix
from fmjax.pipelines.common import flow_condition, flow_source, flow_velocity
from fmjax.reflow import CouplingStore, generate_couplings
from fmjax.samplers import SamplerConfig

__all__ = ["SPLITS", "COUPLING_KEYS", "BATCH_KEYS", "teacher_couplings", "CouplingData"]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
COUPLING_KEYS = ("x0", "x1", "tokens", "token_len", "spk", "prompt", "prompt_len", "mel_mask", "index")
BATCH_KEYS = ("x0", "x1", "tokens", "token_len", "spk", "prompt", "row_mask")


@functools.partial(jax.jit, static_argnames=("model", "draw_loss", "sampler"))
def teacher_couplings(params, batch: dict, key, grid, *, model, draw_loss: CFMLoss, sampler: SamplerConfig):
    """One shard's couplings: noise ``x0`` and prompt lengths drawn by ``draw_loss.draw`` (as in training), the
    prompt = the rows' own first ``prompt_len`` ground-truth frames, ``x1`` = the teacher's guided ODE sample from its
    source (``flow_source(config, x0, mu)``: the noise itself for CosyVoice2's source; the student's loss applies the
    same map to ``x0`` with its own ``mu``).

    Args:
      batch: ``tokens [b, u]``, ``token_len [b]``, ``spk [b, s]``, ``mel [b, T, m]``, ``mel_mask [b, T]``.
      grid: ``[n + 1]`` times (data); ``sampler``: the solver and CFG weight.

    Returns:
      ``(x0 [b, T, m], x1 [b, T, m], prompt [b, T, m], prompt_len [b])``.
    """
    draws = draw_loss.draw(key, batch["mel"], batch["mel_mask"])
    prompt = jax.vmap(prompt_prefix)(batch["mel"], draws.prompt_len)  # [b, T, m]
    cond = flow_condition(model, params, batch["tokens"], batch["token_len"], batch["spk"], prompt=prompt)
    x0 = flow_source(model.config, draws.z, cond.mu)  # the teacher's source; the store keeps the noise z
    x1 = generate_couplings(flow_velocity(model, params), x0, cond, grid, sampler.solver,
                            cfg_weight=sampler.cfg_weight)
    return draws.z, x1, prompt, draws.prompt_len


class CouplingData:
    """Couplings and batches of a reflow experiment (mixed into :class:`train.experiments.reflow.Reflow`, which
    provides ``config``, ``corpus``, ``model``, ``teacher_params`` and ``teacher_step``)."""

    def settings(self) -> dict:
        """What the couplings depend on (the store's manifest; the default directory is named by its digest)."""
        rc, dc = self.config.reflow, self.config.data
        s = rc.sampler
        return {"teacher": str(pathlib.Path(rc.teacher).resolve()), "teacher_step": self.teacher_step,
                "corpus": dc.corpus or "shipped", "buckets": list(dc.buckets), "grid": s.grid,
                "n_steps": s.n_steps, "solver": s.solver, "cfg_weight": s.cfg_weight, "copies": rc.copies,
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
            self.teacher_params, inputs, key, jnp.asarray(rc.sampler.time_grid()),
            model=self.model, draw_loss=draw_loss, sampler=rc.sampler)
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
