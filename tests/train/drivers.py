"""Subprocess drivers for the trainer tests (run as scripts from the repository root, not collected by pytest).

    python tests/train/drivers.py kill WORKDIR STEP KEY=VALUE...    # toy2d; SIGKILLs itself right after step STEP
    python tests/train/drivers.py devices OUTDIR KEY=VALUE...       # toy2d on 1 device, 8 (data parallel), 8 + FSDP
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from train.config import apply_overrides  # noqa: E402
from train.configs import toy2d  # noqa: E402
from train.loop import run  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.experiments import build  # noqa: E402


def kill(workdir: str, step: str, *overrides: str) -> None:
    """Trains and dies by SIGKILL right after update ``step`` (after that step's checkpoint save was started)."""

    def die(current, state):
        if current == int(step):
            os.kill(os.getpid(), signal.SIGKILL)

    run(build(apply_overrides(toy2d.get_config("tiny"), overrides)), workdir, progress=False, callbacks=[die])


def devices(outdir: str, *overrides: str) -> None:
    """The same run on 1 device, on 8 with the batch split, and on 8 with FSDP; writes losses and params."""
    out = pathlib.Path(outdir)
    report = {"devices": len(jax.devices())}
    for name, extra in [("single", ["train.num_devices=1"]), ("dp", ["train.num_devices=8"]),
                        ("fsdp", ["train.num_devices=8", "train.fsdp=true"])]:
        cfg = apply_overrides(toy2d.get_config("tiny"), list(overrides) + extra)
        result = run(build(cfg), out / name, progress=False)
        leaves = jax.tree_util.tree_flatten_with_path(result.state.params)[0]
        report[name] = {
            "losses": [r["loss"] for r in read_metrics(out / name / "metrics.jsonl") if r["kind"] == "train"],
            "sharded": [jax.tree_util.keystr(p) for p, x in leaves if not x.sharding.is_fully_replicated],
            "mu_sharded": sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(result.state.opt_state)),
        }
        np.savez(out / f"{name}.npz", *[np.asarray(x) for _, x in leaves])
    print(json.dumps(report))


if __name__ == "__main__":
    {"kill": kill, "devices": devices}[sys.argv[1]](*sys.argv[2:])
