"""``python -m train --config train/configs/<experiment>.py --preset tiny --workdir DIR [--set key=value ...]``

Rerunning the same command resumes from the newest checkpoint in DIR (and exits at once when the run is
complete). ``--set`` overrides any config field, type-checked (``--set optim.lr=1e-3 --set train.steps=200``);
``--list-keys`` prints the valid keys.
"""

from __future__ import annotations

import argparse
import logging
import sys

from train.config import apply_overrides, leaf_keys
from train.experiment import load_experiment
from train.loop import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="experiment config file (train/configs/<name>.py) or name")
    ap.add_argument("--preset", default="tiny", help="config preset (every experiment has 'tiny')")
    ap.add_argument("--workdir", help="run directory: checkpoints, config.json, metrics.jsonl, tb/, PNGs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--list-keys", action="store_true", help="print the settable config keys and exit")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    logging.getLogger("train").setLevel(logging.INFO)  # ours at INFO; libraries (orbax/absl) at WARNING
    module = load_experiment(args.config)
    config = apply_overrides(module.get_config(args.preset), args.set)
    if args.list_keys:
        print("\n".join(leaf_keys(config)))
        return 0
    if not args.workdir:
        ap.error("--workdir is required")
    result = run(module.build(config), args.workdir, progress=not args.no_progress)
    print(f"step {result.step}/{config.train.steps} ({result.source}, started at {result.start_step}); "
          f"train-step compilations: {result.compiles}; skipped batches: {result.skipped_batches}")
    for path in result.outputs:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
