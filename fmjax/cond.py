"""The conditioning bundle that mel flow-matching estimators receive.

Samplers, CFG and the CFM loss treat the condition as an opaque pytree with a leading batch axis on every
leaf. Mel decoders (Matcha, CosyVoice 1/2/3) share this one: it carries the frame mask too, because the
mask must travel with its rows when classifier-free guidance doubles the batch, and so does the per-row chunk
attention spec (:class:`fmjax.nn.masks.ChunkSpec`): chunk masks are data that rides with the condition. A MeanFlow
student (:mod:`fmjax.meanflow`) also takes the end ``r`` of the interval whose average velocity it predicts; it rides
here too (per row, batch first), so samplers, CFG, streaming and the losses need no second kind of closure.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_mask
from fmjax.nn.masks import ChunkSpec
from fmjax.typing import Array, Float


class MelCond(NamedTuple):
    """Conditions of a mel estimator. All leaves have the batch axis first.

    Attributes:
      mu: ``[b, t, m]`` encoder output aligned to frames (the "text" condition).
      spks: ``[b, s]`` projected speaker embedding (``s`` = 80 in CosyVoice2).
      prompt: ``[b, t, m]`` prompt-prefix condition (CosyVoice's ``cond``): prompt mel in the first
        frames, zeros elsewhere.
      mask: ``[b, t]`` 1 at valid frames. Never dropped by CFG.
      chunk: ``None`` (full context) or a :class:`~fmjax.nn.masks.ChunkSpec` of per-row chunk sizes in frames
        (the estimator's attention masks). Never dropped by CFG. Ignored by a streaming step, whose chunks are
        fixed by the estimator config and its cache.
      r: ``None`` or ``[b]`` end times of the interval ``[t, r]`` (``r >= t``) of a MeanFlow student's average
        velocity (:mod:`fmjax.meanflow`). ``None`` means ``r = t``: the instantaneous velocity, and for a plain flow
        (estimator config ``mean_flow=False``, which rejects any other value) exactly the program of a plain flow.
        Never dropped by CFG (it is a time, not a condition).
    """

    mu: Float[Array, "b t m"]
    spks: Float[Array, "b s"]
    prompt: Float[Array, "b t m"]
    mask: Float[Array, "b t"]
    chunk: ChunkSpec | None = None
    r: Float[Array, "b"] | None = None

    def null(self) -> "MelCond":
        """The unconditional twin used by classifier-free guidance: mu, spks and prompt zeroed; mask, chunk and r kept."""
        return MelCond(jnp.zeros_like(self.mu), jnp.zeros_like(self.spks), jnp.zeros_like(self.prompt), self.mask,
                       self.chunk, self.r)


def null_condition(cond):
    """Unconditional version of ``cond``: ``cond.null()`` when the bundle defines it, else all leaves zeroed."""
    if cond is None:
        return None
    if hasattr(cond, "null"):
        return cond.null()
    return jax.tree_util.tree_map(jnp.zeros_like, cond)


def check_estimator_call(
    x, cond, t, *, mel_dim: int, mu_dim: int, spk_dim: int, cond_dim: int, cache, chunk_size: int,
    num_left_chunks: int = -1, streaming=None, mean_flow: bool = False,
) -> tuple[Float[Array, "b"], "MelCond"]:
    """The input checks every mel estimator makes (in Python, before tracing); returns ``(t [b], cond)``.

    Checks ``x [b, t, mel_dim]``, the shapes of ``cond``'s leaves against it (``cond.chunk`` too), ``t`` (``[b]`` or a
    scalar) and, for a streaming step (``cache`` given), that the chunk has at most ``chunk_size`` frames. The cache's
    own type and layout are the estimator's to check.

    ``cond.r`` (a MeanFlow student's interval end) is accepted only when ``mean_flow`` (the estimator has the second
    time embedding); it must be ``[b]`` or a scalar (returned as ``[b]``), and ``r >= t`` where both are concrete.

    ``streaming`` is the deprecated offline flag of earlier versions: ``True`` becomes
    ``cond.chunk = ChunkSpec.chunked(b, chunk_size, num_left_chunks)`` (data), ``False`` leaves ``cond`` alone.
    """
    if not isinstance(cond, MelCond):
        raise TypeError(f"cond: expected a fmjax.cond.MelCond, got {type(cond).__name__}")
    if getattr(x, "ndim", None) != 3 or x.shape[-1] != mel_dim:
        raise ValueError(f"x: expected shape [b, t, {mel_dim}], got {getattr(x, 'shape', type(x))}")
    b, n = x.shape[:2]
    expected = {
        "cond.mu": (cond.mu, (b, n, mu_dim)),
        "cond.spks": (cond.spks, (b, spk_dim)),
        "cond.prompt": (cond.prompt, (b, n, cond_dim)),
        "cond.mask": (cond.mask, (b, n)),
    }
    for name, (a, shape) in expected.items():
        if tuple(getattr(a, "shape", ())) != shape:
            raise ValueError(f"{name}: expected shape {shape} for x of shape {x.shape}, got {getattr(a, 'shape', a)}")
    check_mask("cond.mask", cond.mask)  # 0/1 only (values checked when concrete)
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (b,))
    if t.shape != (b,):
        raise ValueError(f"t: expected shape [{b}] or a scalar, got {t.shape}")
    if streaming is not None:
        if not isinstance(streaming, bool):
            raise TypeError(f"streaming: expected a Python bool (deprecated; pass cond.chunk), got "
                            f"{type(streaming).__name__}")
        if streaming and cond.chunk is not None:
            raise ValueError("streaming: give either cond.chunk or the deprecated streaming=True, not both")
        if streaming:
            cond = cond._replace(chunk=ChunkSpec.chunked(b, chunk_size, num_left_chunks))
    if cond.chunk is not None:
        if not isinstance(cond.chunk, ChunkSpec):
            raise TypeError(f"cond.chunk: expected a fmjax.nn.masks.ChunkSpec or None, got {type(cond.chunk).__name__}")
        cond.chunk.check(b, "cond.chunk")
    if cond.r is not None:
        cond = cond._replace(r=_check_interval_end(cond.r, t, b, mean_flow))
    if cache is not None:
        if cond.chunk is not None:
            raise ValueError("cond.chunk: a streaming step (cache given) uses the config's chunks "
                             f"(chunk_size={chunk_size}, num_left_chunks={num_left_chunks}); pass chunk=None")
        if n > chunk_size:
            raise ValueError(f"x: a streaming chunk has at most chunk_size={chunk_size} frames, got {n}")
    return t, cond


def _check_interval_end(r, t, b: int, mean_flow: bool):
    if not mean_flow:
        raise ValueError("cond.r: this estimator is a plain flow (its config has mean_flow=False) and takes no "
                         "interval end; a MeanFlow student's config has mean_flow=True (fmjax.meanflow.student_config)")
    r = jnp.asarray(r)
    if r.ndim == 0:
        r = jnp.broadcast_to(r, (b,))
    if r.shape != (b,):
        raise ValueError(f"cond.r: expected shape [{b}] or a scalar (one interval end per row), got {r.shape}")
    if not jnp.issubdtype(r.dtype, jnp.floating):
        raise TypeError(f"cond.r: expected floating times, got dtype {r.dtype}")
    if not isinstance(r, jax.core.Tracer) and not isinstance(t, jax.core.Tracer):
        rn, tn = np.asarray(r, np.float64), np.asarray(t, np.float64)
        if not np.isfinite(rn).all():
            raise ValueError("cond.r: expected finite times, got NaN/inf")
        bad = np.flatnonzero(rn < tn)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"cond.r: expected interval ends r >= t (t = 0 noise -> 1 data: the average velocity "
                             f"over [t, r]), got r < t at rows {bad.tolist()} (row {i}: r = {rn[i]:.6g}, "
                             f"t = {tn[i]:.6g})")
    return r


def pad_chunk(x: Float[Array, "b n m"], cond: MelCond, chunk_size: int) -> tuple[Float[Array, "b C m"], MelCond]:
    """Zero-pads a streaming chunk of ``n <= chunk_size`` frames (and its conditions, mask 0) to ``chunk_size``,
    so that one compiled step serves a stream's last, partial chunk too."""
    n = x.shape[1]
    if n == chunk_size:
        return x, cond
    pad = ((0, 0), (0, chunk_size - n), (0, 0))
    return jnp.pad(x, pad), MelCond(jnp.pad(cond.mu, pad), cond.spks, jnp.pad(cond.prompt, pad),
                                    jnp.pad(cond.mask, pad[:2]), cond.chunk, cond.r)
