"""The training application's experiments: the code the trainer runs for a config.

Configs are data (``train/configs/<name>.py``: ``PRESETS`` and ``get_config(preset)``); the experiment a config
names (``config.experiment``) is built here. An experiment is a :class:`train.experiment.Experiment`.
"""

from __future__ import annotations

import importlib

__all__ = ["EXPERIMENTS", "build"]

EXPERIMENTS = {
    "toy2d": "train.experiments.toy2d:Toy2D",
    "token2mel": "train.experiments.token2mel:Token2Mel",
    "matcha_decoder": "train.experiments.matcha_decoder:MatchaDecoder",
    "reflow": "train.experiments.reflow:Reflow",
    "meanflow": "train.experiments.meanflow:MeanFlow",
}


def build(config):
    """The experiment for a resolved config (by ``config.experiment``)."""
    name = getattr(config, "experiment", None)
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: expected one of {sorted(EXPERIMENTS)}, got {name!r}")
    module, cls = EXPERIMENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)
