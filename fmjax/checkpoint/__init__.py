"""Checkpoints in one place: the trainer's run checkpoints, converted flow checkpoints, and one flow loader for both.

Layouts:

* **trainer workdir** (``python -m train``): ``config.json`` (the resolved experiment config),
  ``checkpoints/<step>/{state,meta}`` (orbax ``CheckpointManager``; ``state`` is the train state -- ``step``,
  ``params``, ``opt_state``, ``ema_params`` -- and ``meta`` JSON holds the step, the data position, the resolved
  config and a fingerprint of every state leaf), ``corrupt_checkpoints/`` (see below);
* **flow checkpoint** (:func:`save_flow_checkpoint`, e.g. a converted CosyVoice2/3 flow): ``config.json`` (the flow
  config with its class name) and ``params/`` (an orbax ``StandardCheckpointer`` tree); loading needs neither torch
  nor the original files.

:func:`load_flow` reads a flow (module + params) from either; :func:`load_teacher` from a trainer workdir only.

Trainer checkpoint safety (:class:`Checkpointer`):

* **Atomic saves.** orbax writes a step into a temporary directory and renames it into place once every item is
  written; a process killed mid-save leaves only a temporary directory, cleaned up on the next start. Old
  checkpoints are pruned only after a newer one is committed. **Async saves are awaited** (next save, ``wait``,
  ``close``), re-raising their error.
* **Corrupt vs incompatible.** :meth:`Checkpointer.restore_latest` tells apart a checkpoint that is *corrupt*
  (unreadable, truncated, fingerprint mismatch: it is moved to ``corrupt_checkpoints/`` with a warning and the
  previous one is tried) from one that is *incompatible* with the caller (different state structure or shapes,
  or a config the caller's ``check`` rejects): that raises :class:`IncompatibleCheckpointError` before anything
  is moved or written. Nothing is ever deleted.
"""

from __future__ import annotations

from fmjax.checkpoint.flow import (LoadedFlow, flow_config_from_dict, flow_config_to_dict, load_flow,
                                   load_flow_checkpoint, load_teacher, save_flow_checkpoint)
from fmjax.checkpoint.run import Checkpointer, Restored, restore_params
from fmjax.checkpoint.trees import (CHECKPOINTS_DIR, CONFIG_FILE, PARAMS_DIR, QUARANTINE_DIR, CheckpointError,
                                    IncompatibleCheckpointError, MissingCheckpointError, compare_leaves, fingerprint,
                                    leaf_table)

__all__ = ["CheckpointError", "MissingCheckpointError", "IncompatibleCheckpointError", "Checkpointer", "Restored", "fingerprint",
           "restore_params", "leaf_table", "compare_leaves", "save_flow_checkpoint", "load_flow_checkpoint",
           "flow_config_to_dict", "flow_config_from_dict", "LoadedFlow", "load_flow", "load_teacher",
           "CONFIG_FILE", "CHECKPOINTS_DIR", "PARAMS_DIR", "QUARANTINE_DIR"]
