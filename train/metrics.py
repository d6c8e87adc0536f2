"""Metrics: buffered device scalars pulled every N steps, NaN/inf checks, JSON lines, TensorBoard, progress bar.

Each step's metrics stay on the device until :meth:`MetricsWriter.flush` pulls the whole buffer in one
transfer, so the host never stalls the accelerator between logs, yet a NaN/inf is still pinned to the exact
step and tensor. Files in the workdir:

* ``metrics.jsonl``: one JSON object per line, ``{"step": N, "kind": "train"|"eval", ...}``, each appended in one
  write and fsynced. On resume, rows after the restored step (written by the interrupted run) and a torn last line
  (a kill during an append) are moved to ``metrics.discarded.jsonl`` with a warning, so the file reads as one clean
  run without duplicates and nothing is lost.
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

from train.files import append_line, atomic_write_text

__all__ = ["NonFiniteError", "MetricsWriter", "read_metrics"]

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient went NaN/inf; the message names the step and the tensor."""


def _parse_lines(path: pathlib.Path) -> tuple[list[tuple[str, dict | None]], bool]:
    """``([(line, row or None if unparsable)], ends_with_newline)``; a missing file is empty."""
    if not path.exists():
        return [], True
    text = path.read_text(errors="replace")
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        out.append((line, row if isinstance(row, dict) else None))
    return out, text.endswith("\n") or not text


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file (empty if it does not exist). Unparsable lines -- a torn last line is
    what a kill during an append leaves -- are skipped with a warning naming the file and line."""
    path = pathlib.Path(path)
    lines, _ = _parse_lines(path)
    for i, (line, row) in enumerate(lines):
        if row is None:
            where = "the torn last line" if i == len(lines) - 1 else f"line {i + 1}"
            log.warning("%s: skipping %s (not a JSON row: %r)", path, where, line[:80])
    return [row for _, row in lines if row is not None]


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
      start_step: the step the run starts or resumes from; rows after it (and unparsable lines) are moved from
        an existing file to ``metrics.discarded.jsonl``, with a warning.
      grad_names: names of the gradient leaves, in the order of the step's ``grad_finite`` flags.
      progress: show a tqdm bar (stderr) with loss, steps/s and ETA.
      redo_eval: the run will evaluate ``start_step`` again (its final evaluation): move that step's eval rows too.
    """

    def __init__(self, workdir, *, total_steps: int, start_step: int, grad_names: list[str], progress: bool = True,
                 redo_eval: bool = False):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.grad_names = grad_names
        self.primary = jax.process_index() == 0
        self._buffer: list[tuple[int, dict]] = []
        self._last_time, self._last_step = time.perf_counter(), start_step
        self.tb = None
        if self.primary:
            self._reconcile(start_step, redo_eval)
            self.tb = _tensorboard_writer(pathlib.Path(workdir) / "tb", start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and self.primary),
                        unit="step", dynamic_ncols=True)

    def _reconcile(self, start_step: int, redo_eval: bool) -> None:
        """Makes the file read as one clean run up to ``start_step``; what it drops goes to the discard file."""
        lines, newline_end = _parse_lines(self.path)

        def drop(row):
            return row is None or row.get("step", 0) > start_step or (
                redo_eval and row.get("kind") == "eval" and row.get("step") == start_step)

        dropped = [line for line, row in lines if drop(row)]
        if not dropped and newline_end:
            return  # untouched
        torn = sum(row is None for _, row in lines)
        if dropped:
            discard = self.path.with_name("metrics.discarded.jsonl")
            for line in dropped:
                append_line(discard, line)
            log.warning("%s: moved %d row(s) after the resumed step %d%s to %s", self.path, len(dropped) - torn,
                        start_step, f" and {torn} torn/unparsable line(s)" if torn else "", discard)
        atomic_write_text(self.path, "".join(line + "\n" for line, row in lines if not drop(row)))

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
        append_line(self.path, json.dumps(row))
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
