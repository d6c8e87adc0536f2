"""The trainer's checkpoints: re-exported from :mod:`fmjax.checkpoint`, which holds every checkpoint format and loader
(see its docstring for the layout, atomic saves, and corrupt vs incompatible restores)."""

from fmjax.checkpoint import (CheckpointError, Checkpointer, IncompatibleCheckpointError, Restored, fingerprint,
                              restore_params)

__all__ = ["Checkpointer", "Restored", "fingerprint", "restore_params", "CheckpointError",
           "IncompatibleCheckpointError"]
