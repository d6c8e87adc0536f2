"""What a rerun in a used workdir may do: resume, refuse (naming why and how to proceed), or archive and start over.

A workdir is *used* when it holds any run file (:data:`RUN_FILES`). Rerunning the same command resumes it. A rerun
whose config differs from the run's in a setting that changes the training state or its trajectory is refused
with :class:`IncompatibleRunError` **before anything in the workdir is touched**; the message names every
differing key with both values and the ways forward:

* ``--set KEY=OLD`` for each key, to resume the run as it was;
* a new ``--workdir`` (optionally ``--init-from OLD_WORKDIR``: a fresh run starting from the old run's params);
* ``--reset``: the old run's files are moved to ``<workdir>/archive/<time>/`` (nothing is deleted), then a
  fresh run starts in the workdir.

Settings that may change on resume (:data:`RESUME_SAFE_KEYS`; an experiment adds its own evaluation-only keys
with ``Experiment.resume_safe_keys``) -- they change neither the saved state nor the batches and keys of the
steps already taken:

* ``train.steps`` -- extends (or shortens) the run; note the cosine learning-rate schedule spans ``train.steps``,
  so the remaining steps follow the stretched schedule;
* ``train.log_every``, ``train.eval_every``, ``train.ckpt_every``, ``train.keep_checkpoints`` -- cadence;
* ``train.eval_ema`` -- which params evaluation and samples use;
* ``train.max_batch_shapes`` -- a bound on compilations;
* ``train.num_devices``, ``train.fsdp`` -- the same state laid out on other devices (the restore reshards it);
* ``train.init_from`` -- read only by a fresh start.

Everything else (model, data, optimizer, seed, batch size, dtype, ...) is part of the run's identity.
"""

from __future__ import annotations

import pathlib
import shutil
import time
from collections.abc import Iterable

__all__ = ["RESUME_SAFE_KEYS", "RUN_FILES", "ARCHIVE_DIR", "RunError", "IncompatibleRunError", "config_diff",
           "check_resume", "incompatible_state", "workdir_is_used", "archive_run"]

RESUME_SAFE_KEYS = (
    "train.steps", "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep_checkpoints",
    "train.eval_ema", "train.max_batch_shapes", "train.num_devices", "train.fsdp", "train.init_from",
)
RUN_FILES = ("checkpoints", "corrupt_checkpoints", "config.json", "metrics.jsonl", "done.json", "resumes.jsonl",
             "tb", "samples", "loss_curve.png", "metrics.png", "reflow_report.json")
ARCHIVE_DIR = "archive"


# Settings added after runs were saved, with the value that reproduces what those runs did: a saved config without
# the key resumes as if it had held this value (any other value is a real difference).
ADDED_KEYS = {"model.prior_weight": 0.0, "model.flow.source_mu": 0.0, "model.flow.source_std": 1.0,
              "model.flow.speaker_shift": False}


class RunError(ValueError):
    """A run cannot start as asked (a user error: the message says what to change)."""


class IncompatibleRunError(RunError):
    """The workdir holds a run whose config or state differs from this one in ways a resume cannot bridge."""


def config_diff(old, new, prefix: str = "") -> dict[str, tuple]:
    """``{dotted key: (old value, new value)}`` for every leaf where two nested config dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new), key=str):
            out.update(config_diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix[:-1]: (old, new)}


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _how_to_proceed(workdir, changed: dict[str, tuple] | None) -> str:
    lines = ["How to proceed:"]
    if changed:
        sets = " ".join(f"--set {k}={_cli_value(v[0])}" for k, v in changed.items() if v[0] is not _ABSENT)
        if sets:
            lines.append(f"  * resume the run as it was: add {sets}")
    lines.append(f"  * start a new run elsewhere: --workdir NEW_DIR (add --init-from {workdir} to start from its "
                 "params)")
    lines.append(f"  * start over here: add --reset (the old run is moved to {workdir}/{ARCHIVE_DIR}/<time>/, "
                 "nothing is deleted)")
    return "\n".join(lines)


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return repr(tuple(value)).replace(" ", "")
    return str(value)


def check_resume(workdir, saved: dict, current: dict, *, step: int | None, safe: Iterable[str] = ()) -> dict:
    """The resume-safe differences between the run's ``saved`` config and the ``current`` one; raises
    :class:`IncompatibleRunError` (naming every other differing key, both values, and how to proceed) if any other
    key differs."""
    allowed = set(RESUME_SAFE_KEYS) | set(safe)
    diff = {k: v for k, v in config_diff(saved, current).items()
            if not (k in ADDED_KEYS and v[0] is _ABSENT and v[1] == ADDED_KEYS[k])}
    bad = {k: v for k, v in diff.items() if k not in allowed}
    if bad:
        at = f"the checkpoint at step {step}" if step is not None else "its config.json"
        rows = "\n".join(f"  {k}: {v[0]!r} in the run, {v[1]!r} now" for k, v in bad.items())
        raise IncompatibleRunError(
            f"--workdir {workdir}: holds a run whose config ({at}) differs from this one in {len(bad)} setting(s) "
            f"that change the training state, so it cannot be resumed with them:\n{rows}\n"
            f"(resume-safe settings: {', '.join(sorted(allowed))}; nothing was written)\n"
            + _how_to_proceed(workdir, bad))
    return {k: v for k, v in diff.items() if k in allowed}


def incompatible_state(workdir, detail: str) -> IncompatibleRunError:
    """The error for a checkpoint whose saved state does not fit this run's (the config may agree while the code
    changed)."""
    return IncompatibleRunError(f"--workdir {workdir}: {detail}\n(nothing was written)\n"
                                + _how_to_proceed(workdir, None))


def workdir_is_used(workdir) -> list[str]:
    """The run files present in ``workdir`` (empty: a fresh or missing directory)."""
    root = pathlib.Path(workdir)
    return [name for name in RUN_FILES if (root / name).exists()]


def archive_run(workdir) -> pathlib.Path | None:
    """Moves every run file of ``workdir`` into ``<workdir>/archive/<time>/`` (returned; None when there was
    nothing to move). Nothing is deleted."""
    root = pathlib.Path(workdir)
    present = workdir_is_used(root)
    if not present:
        return None
    target = root / ARCHIVE_DIR / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "+")
    target.mkdir(parents=True)
    for name in present:
        shutil.move(str(root / name), str(target / name))
    for png in root.glob("*.png"):  # other figures of the run
        shutil.move(str(png), str(target / png.name))
    return target
