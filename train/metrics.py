"""Metrics: buffered device scalars pulled every N steps, NaN/inf checks, JSON lines, TensorBoard, progress bar.

Each step's metrics stay on the device until :meth:`MetricsWriter.flush` pulls the whole buffer in one
transfer, so the host never stalls the accelerator between logs, yet a NaN/inf is still pinned to the exact
step and tensor. Files in the workdir:

* ``metrics.jsonl``: one JSON object per line, ``{"step": N, "kind": "train"|"eval", ...}``; on resume, lines
  after the restored step (written by the interrupted run) are dropped, so the file reads as one clean run.
* ``tb/``: TensorBoard event files, when ``tensorboardX`` is installed (silently skipped otherwise).

Step numbers count updates: "step N" is the update that takes the state from step N-1 to N.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from train.files import atomic_write_text

__all__ = ["NonFiniteError", "MetricsWriter", "read_metrics"]

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient went NaN/inf; the message names the step and the tensor."""


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file (empty if it does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tensorboard_writer(logdir: pathlib.Path, purge_step: int | None):
    # tensorboardX imports torch when it is installed (seconds, for an isinstance check we never need):
    # hide torch during the import unless it is loaded already.
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(logdir=str(logdir), purge_step=purge_step)


class MetricsWriter:
    """Collects per-step metrics and writes them every ``flush``.

    Args:
      workdir: where ``metrics.jsonl`` and ``tb/`` go.
      total_steps: the run's length (progress bar and ETA).
      start_step: the step the run starts or resumes from; rows after it are dropped from an existing file.
      grad_names: names of the gradient leaves, in the order of the step's ``grad_finite`` flags.
      progress: show a tqdm bar (stderr) with loss, steps/s and ETA.
    """

    def __init__(self, workdir, *, total_steps: int, start_step: int, grad_names: list[str], progress: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.grad_names = grad_names
        self.primary = jax.process_index() == 0
        self._buffer: list[tuple[int, dict]] = []
        self._last_time, self._last_step = time.perf_counter(), start_step
        self.tb = None
        if self.primary:
            rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
            self.tb = _tensorboard_writer(pathlib.Path(workdir) / "tb", start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and self.primary),
                        unit="step", dynamic_ncols=True)

    def push(self, step: int, metrics: dict) -> None:
        """Buffers the (device) metrics of update ``step``; nothing is transferred."""
        self._buffer.append((step, metrics))

    def flush(self, **extra) -> dict | None:
        """Pulls the buffer, raises :class:`NonFiniteError` at the first non-finite loss or gradient, writes one
        ``train`` row (means over the buffered steps, ``lr`` of the last, ``steps_per_sec``, plus ``extra``)."""
        if not self._buffer:
            return None
        host = jax.device_get([m for _, m in self._buffer])
        steps = [s for s, _ in self._buffer]
        self._buffer = []
        for step, m in zip(steps, host):
            self._check(step, m)
        now = time.perf_counter()
        row = {"step": steps[-1], "kind": "train"}
        for key in host[-1]:
            if key == "grad_finite":
                continue
            row[key] = float(host[-1][key]) if key == "lr" else float(np.mean([m[key] for m in host]))
        row["steps_per_sec"] = (steps[-1] - self._last_step) / max(now - self._last_time, 1e-9)
        row.update(extra)
        self._last_time, self._last_step = now, steps[-1]
        self._write(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
        self.bar.update(steps[-1] - self.bar.n)
        return row

    def _check(self, step: int, m: dict) -> None:
        if not math.isfinite(float(m["loss"])):
            raise NonFiniteError(f"non-finite loss ({float(m['loss'])}) at step {step}")
        bad = [name for name, ok in zip(self.grad_names, np.asarray(m["grad_finite"])) if not ok]
        if bad:
            raise NonFiniteError(f"non-finite gradient at step {step} in {len(bad)} leaf/leaves: {', '.join(bad)}")
        for key, value in m.items():
            if key != "grad_finite" and not math.isfinite(float(value)):
                raise NonFiniteError(f"non-finite {key} ({float(value)}) at step {step}")

    def write(self, step: int, scalars: dict, kind: str = "eval") -> None:
        """Writes host values (floats, or lists of floats such as per-t-bin losses) as one row."""
        self._write({"step": step, "kind": kind, **scalars})
        if scalars:
            self.bar.write(f"step {step} {kind}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in scalars.items() if isinstance(v, float)))

    def _write(self, row: dict) -> None:
        if not self.primary:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            prefix = "" if row["kind"] == "train" else f"{row['kind']}/"
            for key, value in row.items():
                if key in ("step", "kind"):
                    continue
                if isinstance(value, (list, tuple)):
                    for i, v in enumerate(value):
                        if v is not None:  # an empty bin
                            self.tb.add_scalar(f"{prefix}{key}/{i}", v, row["step"])
                elif isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}{key}", value, row["step"])
            self.tb.flush()

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
