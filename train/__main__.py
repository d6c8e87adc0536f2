"""``python -m train --config train/configs/<experiment>.py --preset tiny --workdir DIR [--set key=value ...]``

Rerunning the same command resumes from the newest checkpoint in DIR (and exits at once when the run is
complete); Ctrl-C stops cleanly and says where the rerun resumes. ``--set`` overrides any config field,
type-checked (``--set optim.lr=1e-3 --set train.steps=200``); ``--list-keys`` prints the valid keys.

A rerun whose config differs from the run in DIR in a setting that changes the training state (anything but the
resume-safe settings listed in ``train/resume.py``: train.steps, the logging/eval/checkpoint cadence, devices...)
stops before writing anything and names the keys; ``--reset`` archives the old run (under DIR/archive/) and starts
over, ``--init-from OLD_DIR`` starts a new run from another run's parameters.

Exit status: 0 done, 1 training failed (e.g. a non-finite loss), 2 bad arguments or a run that cannot start as
asked, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import warnings

PROG = "python -m train"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True,
                    help="experiment: a config file (train/configs/<name>.py) or its name, e.g. toy2d, token2mel "
                         "(required)")
    ap.add_argument("--preset", default="tiny", help="config preset; every experiment has 'tiny' (default: tiny)")
    ap.add_argument("--workdir", help="run directory: checkpoints/, config.json, metrics.jsonl, tb/, PNGs "
                                      "(required unless --list-keys)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, type-checked; repeatable (default: none); see --list-keys")
    ap.add_argument("--init-from", metavar="WORKDIR",
                    help="start a fresh run from the parameters of another run's newest checkpoint (same as "
                         "--set train.init_from=WORKDIR; default: none)")
    ap.add_argument("--reset", action="store_true",
                    help="DIR holds a run: move its files to DIR/archive/<time>/ (nothing is deleted) and start a "
                         "fresh run (default: off, resume)")
    ap.add_argument("--list-keys", action="store_true", help="print the settable config keys and exit")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    ap.add_argument("--verbose", action="store_true",
                    help="show library warnings (absl, orbax) and tracebacks of failures (default: quiet)")
    return ap


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the first call)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def quiet_libraries(verbose: bool = False) -> None:
    """Our loggers at INFO; absl/orbax/jax chatter and library warnings hidden unless ``verbose``."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("train", "fmjax"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        for name in ("absl", "orbax", "jax", "jax._src", "tensorstore"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"(orbax|absl|jax|flax|tensorboardX)(\..*)?")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_writable(ap, flag: str, path) -> None:
    """Usage error unless ``path`` is (or can be created as) a writable directory."""
    p = pathlib.Path(path)
    if p.exists():
        if not p.is_dir():
            ap.error(f"{flag}: expected a directory, {str(p)!r} is a file")
        if not os.access(p, os.W_OK | os.X_OK):
            ap.error(f"{flag}: the directory {str(p)!r} is not writable")
        return
    parent = next((q for q in p.absolute().parents if q.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        ap.error(f"{flag}: cannot create {str(p)!r} ({parent} is not a writable directory)")


def _one_line(err: BaseException) -> str:
    return " ".join((str(err).strip() or type(err).__name__).split())


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return _main(ap, args)
    except KeyboardInterrupt:
        print("\ninterrupted before training started; rerun the same command to start", file=sys.stderr)
        return 130


def _main(ap, args) -> int:
    quiet_libraries(args.verbose)
    from train.config import apply_overrides, check_config, leaf_keys
    from train.experiment import load_experiment

    try:
        module = load_experiment(args.config)
        if args.preset not in module.PRESETS:
            ap.error(f"--preset: expected one of {list(module.PRESETS)}, got {args.preset!r}")
        overrides = list(args.set) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
        config = apply_overrides(module.get_config(args.preset), overrides)
        check_config(config)
    except (ValueError, TypeError) as err:
        ap.error(_one_line(err))
    if args.list_keys:
        print("\n".join(leaf_keys(config)))
        return 0
    if not args.workdir:
        ap.error("--workdir: required (the run directory)")
    _check_writable(ap, "--workdir", args.workdir)
    if config.train.init_from and not pathlib.Path(config.train.init_from).exists():
        ap.error(f"--init-from / train.init_from: {config.train.init_from!r} does not exist")
    return _train(ap, module, config, args)


def _train(ap, module, config, args) -> int:
    from train.loop import TrainingInterrupted, run
    from train.metrics import NonFiniteError
    from train.resume import RunError

    try:
        exp = module.build(config)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if args.verbose:
            raise
        ap.error(_one_line(err))
    try:
        result = run(exp, args.workdir, progress=not args.no_progress, reset=args.reset)
    except RunError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        where = (f"the checkpoint at step {stop.checkpoint}" if stop.checkpoint is not None else "step 0 (no "
                 "checkpoint was saved yet)")
        print(f"\ninterrupted at step {stop.step}; rerun the same command to resume (from {where})",
              file=sys.stderr)
        return 130
    except NonFiniteError as err:
        if args.verbose:
            raise
        print(f"{PROG}: training failed: {err} (rerun resumes from the last checkpoint; --verbose shows the "
              "traceback)", file=sys.stderr)
        return 1
    print(f"step {result.step}/{config.train.steps} ({result.source}, started at {result.start_step}); "
          f"train-step compilations: {result.compiles}; skipped batches: {result.skipped_batches}")
    for path in result.outputs:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
