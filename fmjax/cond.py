"""The conditioning bundle that mel flow-matching estimators receive.

Samplers, CFG and the CFM loss treat the condition as an opaque pytree with a leading batch axis on every
leaf. Mel decoders (Matcha, CosyVoice 1/2/3) share this one: it carries the frame mask too, because the
mask must travel with its rows when classifier-free guidance doubles the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fmjax.typing import Array, Float


class MelCond(NamedTuple):
    """Conditions of a mel estimator. All leaves have the batch axis first.

    Attributes:
      mu: ``[b, t, m]`` encoder output aligned to frames (the "text" condition).
      spks: ``[b, s]`` projected speaker embedding (``s`` = 80 in CosyVoice2).
      prompt: ``[b, t, m]`` prompt-prefix condition (CosyVoice's ``cond``): prompt mel in the first
        frames, zeros elsewhere.
      mask: ``[b, t]`` 1 at valid frames. Never dropped by CFG.
    """

    mu: Float[Array, "b t m"]
    spks: Float[Array, "b s"]
    prompt: Float[Array, "b t m"]
    mask: Float[Array, "b t"]

    def null(self) -> "MelCond":
        """The unconditional twin used by classifier-free guidance: mu, spks and prompt zeroed, mask kept."""
        return MelCond(jnp.zeros_like(self.mu), jnp.zeros_like(self.spks), jnp.zeros_like(self.prompt), self.mask)


def null_condition(cond):
    """Unconditional version of ``cond``: ``cond.null()`` when the bundle defines it, else all leaves zeroed."""
    if cond is None:
        return None
    if hasattr(cond, "null"):
        return cond.null()
    return jax.tree_util.tree_map(jnp.zeros_like, cond)
