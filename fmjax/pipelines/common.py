"""Glue every token-to-mel pipeline shares, written once: the velocity closures of a flow, condition assembly
(speaker -> encode -> :class:`~fmjax.cond.MelCond`), the prompt condition, the noise table, and the host-side
input checks that run before anything is traced.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_finite
from fmjax.cond import MelCond
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import frame_mask
from fmjax.noise import MAX_FRAMES, cosyvoice_noise
from fmjax.typing import Array, Float, Int, Key

__all__ = [
    "flow_velocity", "flow_step_velocity", "flow_condition", "prompt_condition", "pack_prompt", "noise_table",
    "check_ids", "check_lengths", "check_finite", "check_id_batch",
]


# ------------------------------------------------------------------------------------------------- closures
def flow_velocity(model, params) -> Callable:
    """The offline velocity closure of a flow's estimator: ``velocity(t [b], x [b, t, m], cond, r=None) -> v``.

    ``r`` (``[b]``, a MeanFlow student's interval end, set as ``cond.r``; the ``meanflow`` solver passes it) makes it
    the student's average velocity over ``[t, r]``; without it the closure is the plain flow's."""

    def velocity(t, x, cond, r=None):
        if r is not None:
            cond = cond._replace(r=r)
        return model.apply(params, x, cond, t, method="estimate")[0]

    return velocity


def flow_step_velocity(model, params) -> Callable:
    """The streaming velocity closure: ``velocity(t, x_chunk, cond_chunk, cache, r=None) -> (v_chunk, cache)``
    (``r`` as in :func:`flow_velocity`)."""

    def velocity(t, x, cond, cache, r=None):
        if r is not None:
            cond = cond._replace(r=r)
        return model.apply(params, x, cond, t, cache, method="estimate")

    return velocity


# ------------------------------------------------------------------------------------------------ conditions
def flow_condition(
    model, params, tokens: Int[Array, "b n"], mask, embedding: Float[Array, "b s"], *,
    prompt: Float[Array, "b f m"] | None = None, chunk: ChunkSpec | None = None, return_aux: bool = False,
):
    """Speaker -> encode -> :class:`~fmjax.cond.MelCond`: the estimator's conditions for whole token sequences.

    Args:
      model, params: a flow (:class:`fmjax.models.protocol.Flow`) and its params.
      tokens: ``[b, n]`` ids; ``mask``: ``[b, n]`` 0/1, ``[b]`` lengths or None (all valid).
      embedding: ``[b, spk_embed_dim]`` speaker embeddings.
      prompt: ``[b, r·n, m]`` prompt condition (None = zeros).
      chunk: token-level :class:`~fmjax.nn.masks.ChunkSpec` (None = full context); the estimator gets it in frames.
      return_aux: also return the encoder's aux (``hidden``).

    Returns:
      ``MelCond(mu [b, r·n, m], spks, prompt, mask [b, r·n], chunk)`` (and the aux dict).
    """
    r = model.config.token_mel_ratio
    b, n = tokens.shape
    spks = model.apply(params, embedding, method="speaker")  # [b, spk_dim]
    out = model.apply(params, tokens, mask, chunk=chunk, return_aux=return_aux, method="encode")
    mu = shift_condition(model, params, out[0], spks)  # [b, r·n, m]
    frames = frame_mask(mask, b, n, r).astype(mu.dtype)  # [b, r·n]
    cond = MelCond(mu, spks, jnp.zeros_like(mu) if prompt is None else prompt, frames,
                   None if chunk is None else chunk.scaled(r))
    return (cond, out[2]) if return_aux else cond


def shift_condition(model, params, mu: Float[Array, "b t m"], spks: Float[Array, "b e"]) -> Float[Array, "b t m"]:
    """``mu`` plus the flow's per-speaker offset (``model.config.speaker_shift``; absent or False: ``mu`` itself,
    the program unchanged). ``spks [b, spk_dim]`` is the projected speaker (``method="speaker"``)."""
    if not getattr(model.config, "speaker_shift", False):
        return mu
    return mu + model.apply(params, spks, method="shift")[:, None].astype(mu.dtype)


def flow_source(config, noise: Float[Array, "b t m"], mu: Float[Array, "b t m"]) -> Float[Array, "b t m"]:
    """The ODE's source ``x0 = source_std · noise + source_mu · mu`` of a flow config (fields absent = CosyVoice2's
    pure noise, 1 and 0: ``noise`` itself is returned and the program is unchanged). ``mu`` is the encoder's
    condition at the same frames; padded frames are ignored downstream like any other padding."""
    std, weight = float(getattr(config, "source_std", 1.0)), float(getattr(config, "source_mu", 0.0))
    x0 = noise if std == 1.0 else std * noise
    return x0 if weight == 0.0 else x0 + weight * mu.astype(x0.dtype)


def has_default_source(config) -> bool:
    """True when ``config``'s source is pure noise (``source_mu = 0``, ``source_std = 1``, or no such fields)."""
    return float(getattr(config, "source_std", 1.0)) == 1.0 and float(getattr(config, "source_mu", 0.0)) == 0.0


def prompt_condition(prompt_mel: Float[Array, "b p m"], prompt_frames: Int[Array, "b"], total: int):
    """The prompt condition ``[b, total, m]``: each row's first ``prompt_frames`` frames of ``prompt_mel``, zeros after."""
    keep = (jnp.arange(total)[None, :] < prompt_frames[:, None])[..., None]  # [b, T, 1]
    prompt_mel = prompt_mel[:, :total]
    padded = jnp.pad(prompt_mel, ((0, 0), (0, total - prompt_mel.shape[1]), (0, 0)))
    return jnp.where(keep, padded, 0.0)


def pack_prompt(
    tokens, lengths, prompt_tokens, prompt_lengths, width: int | None = None
) -> tuple[Int[Array, "b s"], Int[Array, "b"]]:
    """Per row, ``[prompt[:P] | tokens[:N]]`` left-aligned in ``[b, width]`` (default ``p + n``; zeros after);
    returns ``(sequence, P + N)``."""
    b, n_max = tokens.shape
    p_max = prompt_tokens.shape[1]
    pos = jnp.arange(p_max + n_max if width is None else width)[None, :]  # [1, s]
    p = prompt_lengths[:, None]
    from_prompt = jnp.take_along_axis(prompt_tokens, jnp.clip(pos, 0, max(p_max - 1, 0)), axis=1) if p_max else 0
    from_tokens = jnp.take_along_axis(tokens, jnp.clip(pos - p, 0, n_max - 1), axis=1)
    total = prompt_lengths + lengths
    seq = jnp.where(pos < p, from_prompt, jnp.where(pos < total[:, None], from_tokens, 0))  # [b, s]
    return seq.astype(jnp.int32), total.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------- noise
def noise_table(noise, key: Key | None, mel_dim: int, *, frames: int = MAX_FRAMES, batch: int | None = None):
    """The initial noise of a pipeline, by absolute frame: the one rule for ``noise`` / ``key`` / the default.

    * ``noise`` given: a ``[T, m]`` table (or ``[b, T, m]`` when ``batch`` is given) with ``T >= frames``, checked
      for shape and NaN/inf;
    * ``key`` given: ``jax.random.normal(key, [T, m])`` with ``T = frames`` (``[batch, T, m]`` when ``batch`` is
      given: one draw per row);
    * neither: CosyVoice's fixed noise (``torch.manual_seed(0); torch.randn(1, 80, 15000)``), the same for every row.

    Returns a float32 ``[T, m]`` or ``[b, T, m]`` array.
    """
    if key is not None:
        if noise is not None:
            raise ValueError("noise/key: pass at most one of them")
        shape = (frames, mel_dim) if batch is None else (batch, frames, mel_dim)
        return jax.random.normal(key, shape, jnp.float32)
    if noise is None:
        if frames > MAX_FRAMES:
            raise ValueError(f"tokens: {frames} frames (prompt included) exceed CosyVoice's fixed noise "
                             f"({MAX_FRAMES} frames); pass noise= or key=")
        return jnp.asarray(cosyvoice_noise(frames, mel_dim), jnp.float32)
    shape = tuple(np.shape(noise))
    ok = len(shape) == 2 or (batch is not None and len(shape) == 3 and shape[0] == batch)
    if not ok or shape[-1] != mel_dim or shape[-2] < frames:
        rows = "" if batch is None else f" or [{batch}, T >= {frames}, {mel_dim}]"
        raise ValueError(f"noise: expected [T >= {frames}, {mel_dim}]{rows}, got {shape}")
    check_finite("noise", noise)
    return jnp.asarray(noise, jnp.float32)


# ----------------------------------------------------------------------------------------------- host checks
def check_lengths(lengths, b: int, width: int, name: str, *, minimum: int = 0) -> np.ndarray:
    """Host-side: ``[b]`` integer lengths in ``[minimum, width]`` (None = all ``width``), as int64 numpy."""
    if lengths is None:
        return np.full((b,), width, np.int64)
    if isinstance(lengths, jax.core.Tracer):
        raise TypeError(f"{name}: expected concrete lengths, got a tracer")
    arr = np.asarray(lengths)
    if arr.shape != (b,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected [{b}] integer lengths, got shape {arr.shape} dtype {arr.dtype}")
    if b and (arr.min() < minimum or arr.max() > width):
        raise ValueError(f"{name}: expected values in [{minimum}, {width}], got {arr.tolist()}")
    return arr.astype(np.int64)


def check_ids(ids: np.ndarray, lengths: np.ndarray, vocab: int, name: str) -> None:
    """Host-side: integer ids ``[b, n]`` inside ``[0, vocab)`` at the first ``lengths[i]`` positions of each row."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}: expected integer ids, got dtype {ids.dtype}")
    valid = np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}: {int(bad.sum())} id(s) outside the vocabulary [0, {vocab}), first {name}[{i}, {j}] = "
            f"{int(ids[i, j])}"
        )


def check_id_batch(ids, lengths, vocab: int, name: str, len_name: str, *, batch=None, allow_empty=True):
    """Host-side validation of an id array and its lengths; returns numpy ``(ids int32 [b, n], lengths int64 [b])``."""
    if isinstance(ids, jax.core.Tracer):
        raise TypeError(f"{name}: expected concrete ids (call the pipeline outside jit; it jits itself)")
    arr = np.asarray(ids)
    if arr.ndim != 2 or (batch is not None and arr.shape[0] != batch):
        raise ValueError(f"{name}: expected shape [{'b' if batch is None else batch}, n], got {arr.shape}")
    if not allow_empty and arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one token per row, got shape {arr.shape}")
    lens = check_lengths(lengths, arr.shape[0], arr.shape[1], len_name, minimum=0 if allow_empty else 1)
    check_ids(arr, lens, vocab, name)
    return arr.astype(np.int32), lens
