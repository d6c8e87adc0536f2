"""The optimizer: global-norm clipping, then AdamW on a linear-warmup + cosine-decay schedule."""

from __future__ import annotations

import optax

from train.config import OptimConfig

__all__ = ["make_schedule", "make_optimizer"]


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate by step: 0 → ``cfg.lr`` linearly over ``warmup_steps``, then a cosine down to
    ``cfg.lr * end_lr_factor`` at ``total_steps``."""
    if not cfg.warmup_steps < total_steps:
        raise ValueError(f"optim.warmup_steps: expected fewer than train.steps={total_steps}, got {cfg.warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps, decay_steps=total_steps,
        end_value=cfg.lr * cfg.end_lr_factor,
    )


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """``clip_by_global_norm(cfg.clip_norm)`` (skipped when 0) followed by AdamW on :func:`make_schedule`."""
    adamw = optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm > 0 else adamw
