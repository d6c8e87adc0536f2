"""Token-to-mel with a CosyVoice flow: offline inference (prompt, speaker, CFG, fixed noise) and the training loss.

**Inference** (CosyVoice2's ``flow.inference``, batched): each row's sequence is ``[prompt tokens | tokens]``;
the flow encodes it to ``mu`` (2 frames per token), the prompt mel is the ``prompt`` condition on the first
``2P`` frames, and an ODE from noise to data runs with classifier-free guidance by batch doubling
(``v = (1 + w)·v(c) − w·v(∅)``, ``w = 0.7``) on a time grid (cosine, 10 Euler steps by default; any solver, grid
and step count). The noise of frame ``f`` of a row is CosyVoice's fixed ``rand_noise[f]`` (so a prefix always
gets the same noise), or a ``jax.random`` draw from ``key``. Only the frames after the prompt are returned.
``streaming=True`` uses the chunk attention masks in encoder and estimator (torch ``streaming=True``), the
offline twin of :mod:`fmjax.token2mel_stream`.

Rows of a batch are padded on the right. The estimator ignores padding exactly; the encoder, like torch's,
lets the look-ahead conv of a shorter row read its embedded padding (see
:class:`~fmjax.models.encoder.UpsampleConformerEncoder`), so a short row in a ragged batch differs slightly
from the same row run alone in its last frames' context.

**Training** (CosyVoice2's ``forward`` + ``compute_loss``): :func:`flow_loss` draws, once per batch, whether
encoder and estimator use chunk masks (probability 0.5, "unified training"), then evaluates
:class:`fmjax.loss.CFMLoss` (uniform t, sigma 1e-6, CFG dropout 0.2, a prompt prefix of
``U{0..⌊0.3·len⌋}`` frames with probability 0.5). The choice is a traced ``lax.cond`` between the two mask kinds:
one compiled step holds both branches and runs one of them, so it never recompiles. (Cost note: differentiated on
XLA CPU, the ``cond`` measured about as slow as evaluating both branches, 2.5-3x one branch; making the mask kind
data would need the encoder and estimator to take their chunk size as a traced value.)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond
from fmjax.loss import CFMLoss, LossDraws
from fmjax.models.flow import check_speaker_embedding
from fmjax.noise import MAX_FRAMES, cosyvoice_noise
from fmjax.paths import CondOTPath
from fmjax.samplers import classifier_free_guidance, get_solver, sample
from fmjax.timesteps import Uniform, time_grid
from fmjax.typing import Array, Float, Int, Key

__all__ = ["COSYVOICE2_LOSS", "Token2MelOutput", "token2mel", "cfm_loss", "flow_loss", "pack_prompt"]

COSYVOICE2_LOSS = CFMLoss(
    path=CondOTPath(1e-6), t_sampler=Uniform(), cfg_rate=0.2, prompt_prob=0.5, prompt_max_frac=0.3
)
"""CosyVoice2 HEAD's training loss: uniform t, sigma 1e-6, CFG dropout 0.2, prompt prefix prob 0.5 / max 0.3."""


class Token2MelOutput(NamedTuple):
    """Result of :func:`token2mel`.

    Attributes:
      mel: ``[b, r·n, m]`` generated frames after each row's prompt, zero past ``lengths``.
      lengths: ``[b]`` int32 valid frames (``r ·`` tokens).
      aux: None, or (``return_aux=True``) a dict with ``mu``, ``mask``, ``spks``, ``prompt``, ``noise`` (the whole
        ``[b, T, m]`` sequences), ``encoder_out`` (when the flow has an encoder), ``trajectory`` ``[n, b, T, m]``
        and ``grid``.
    """

    mel: Float[Array, "b f m"]
    lengths: Int[Array, "b"]
    aux: Any = None


# ---------------------------------------------------------------------------------------------------- packing
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


def _frames_after(x: Float[Array, "b t m"], start: Int[Array, "b"], length: int) -> Float[Array, "b f m"]:
    """``x[i, start[i] : start[i] + length]`` per row (clamped reads)."""
    idx = jnp.clip(start[:, None] + jnp.arange(length)[None, :], 0, x.shape[1] - 1)  # [b, f]
    return jnp.take_along_axis(x, idx[..., None], axis=1)  # [b, f, m]


# --------------------------------------------------------------------------------------------------- inference
def token2mel(
    model: nn.Module,
    params,
    tokens,
    embedding,
    *,
    lengths=None,
    prompt_tokens=None,
    prompt_mel=None,
    prompt_lengths=None,
    streaming: bool = False,
    grid="cosine",
    n_steps: int = 10,
    solver: str = "euler",
    cfg_weight: float = 0.7,
    noise=None,
    key: Key | None = None,
    return_aux: bool = False,
) -> Token2MelOutput:
    """Generates mel frames for speech tokens (CosyVoice2 ``flow.inference(..., finalize=True)``, batched).

    Args:
      model: a flow module (:class:`~fmjax.models.flow.CosyVoice2Flow`, or CosyVoice3's) with ``params``.
      tokens: ``[b, n]`` int ids to synthesise.
      embedding: ``[b, spk_embed_dim]`` speaker embeddings.
      lengths: ``[b]`` valid tokens per row (default all ``n``).
      prompt_tokens: ``[b, p]`` ids of the prompt (None = no prompt).
      prompt_mel: ``[b, r·p, m]`` the prompt's mel (CosyVoice's ``prompt_feat``), ``r`` frames per prompt token.
      prompt_lengths: ``[b]`` valid prompt tokens per row (default all ``p``).
      streaming: chunk attention masks (torch ``streaming=True``) instead of full context.
      grid: a grid name (``cosine``, ``linear``, ``sway``) with ``n_steps``, or an ``[n + 1]`` array of times.
      n_steps: ODE steps for a named grid.
      solver: ``euler``, ``midpoint``, ``heun``, ``rk4`` or a :class:`~fmjax.samplers.Solver`.
      cfg_weight: guidance weight ``w`` (0.7; 0 disables the unconditional pass).
      noise: ``[T, m]`` or ``[b, T, m]`` initial noise with ``T >=`` the longest ``r·(p + n)``; default
        CosyVoice's fixed noise (frame ``f`` of every row gets ``rand_noise[f]``).
      key: draw the noise from ``jax.random.normal(key, [b, T, m])`` instead.
      return_aux: also return intermediates (see :class:`Token2MelOutput`).

    Returns:
      :class:`Token2MelOutput` ``(mel [b, r·n, m], lengths [b], aux)``.
    """
    cfg = model.config
    r, m = cfg.token_mel_ratio, cfg.mel_dim
    tokens, lengths = _check_ids(tokens, lengths, cfg.vocab_size, "tokens", "lengths", allow_empty=False)
    b, n = tokens.shape
    check_speaker_embedding(embedding, b, cfg.spk_embed_dim)
    if prompt_tokens is None:
        if prompt_mel is not None or prompt_lengths is not None:
            raise ValueError("prompt_mel/prompt_lengths: given without prompt_tokens")
        prompt_tokens, prompt_lengths = np.zeros((b, 0), np.int32), np.zeros((b,), np.int32)
        prompt_mel = np.zeros((b, 0, m), np.float32)
    else:
        prompt_tokens, prompt_lengths = _check_ids(
            prompt_tokens, prompt_lengths, cfg.vocab_size, "prompt_tokens", "prompt_lengths", batch=b
        )
        expected = (b, r * prompt_tokens.shape[1], m)
        if prompt_mel is None or tuple(np.shape(prompt_mel)) != expected:
            raise ValueError(
                f"prompt_mel: expected shape {expected} ({r} frames per prompt token), got "
                f"{None if prompt_mel is None else np.shape(prompt_mel)}"
            )
    width = int(np.max(np.asarray(prompt_lengths) + np.asarray(lengths)))  # the longest row: no extra padding
    frames = r * width
    grid = _grid(grid, n_steps)
    get_solver(solver)
    if key is not None:
        if noise is not None:
            raise ValueError("noise/key: pass at most one of them")
        noise = jax.random.normal(key, (b, frames, m), jnp.float32)
    elif noise is None:
        if frames > MAX_FRAMES:
            raise ValueError(f"tokens: {frames} frames (prompt included) exceed CosyVoice's fixed noise ({MAX_FRAMES})")
        noise = cosyvoice_noise(frames, m)
    else:
        shape = tuple(np.shape(noise))
        if len(shape) not in (2, 3) or shape[-1] != m or shape[-2] < frames or (len(shape) == 3 and shape[0] != b):
            raise ValueError(f"noise: expected [T >= {frames}, {m}] or [{b}, T >= {frames}, {m}], got {shape}")
    noise = jnp.asarray(noise, jnp.float32)
    noise = jnp.broadcast_to(noise[..., :frames, :], (b, frames, m))
    out = _token2mel(
        model, streaming, get_solver(solver), float(cfg_weight), bool(return_aux), width, params,
        tokens, lengths, prompt_tokens, prompt_lengths, jnp.asarray(prompt_mel, jnp.float32),
        jnp.asarray(embedding, jnp.float32), noise, grid,
    )
    return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _token2mel(model, streaming, solver, cfg_weight, return_aux, width, params, tokens, lengths, prompt_tokens,
               prompt_lengths, prompt_mel, embedding, noise, grid) -> Token2MelOutput:
    r = model.config.token_mel_ratio
    seq, total = pack_prompt(tokens, lengths, prompt_tokens, prompt_lengths, width)  # [b, s]
    spks = model.apply(params, embedding, method="speaker")  # [b, spk_dim]
    mu, mask, hidden = model.apply(
        params, seq, total, chunk_masked=streaming, return_hidden=True, method="encode"
    )  # [b, r·s, m], [b, r·s], [b, r·s, d]
    t_all = mu.shape[1]
    prompt_frames = r * prompt_lengths
    keep = (jnp.arange(t_all)[None, :] < prompt_frames[:, None])[..., None]  # [b, T, 1]
    prompt_mel = prompt_mel[:, :t_all]
    prompt = jnp.where(keep, jnp.pad(prompt_mel, ((0, 0), (0, t_all - prompt_mel.shape[1]), (0, 0))), 0.0)
    cond = MelCond(mu, spks, prompt, mask)

    def velocity(t, x, c):
        return model.apply(params, x, c, t, streaming=streaming, method="estimate")[0]

    guided = classifier_free_guidance(velocity, cfg_weight) if cfg_weight != 0.0 else velocity
    x1, sample_aux = sample(guided, noise, cond, grid, solver, return_trajectory=return_aux)
    n_frames = r * tokens.shape[1]
    mel = _frames_after(x1, prompt_frames, n_frames)  # [b, r·n, m]
    out_len = (r * lengths).astype(jnp.int32)
    mel = jnp.where((jnp.arange(n_frames)[None, :] < out_len[:, None])[..., None], mel, 0.0)
    aux = None
    if return_aux:
        aux = dict(mu=mu, mask=mask, spks=spks, prompt=prompt, noise=noise, trajectory=sample_aux.trajectory,
                   grid=grid, encoder_out=hidden)
    return Token2MelOutput(mel, out_len, aux)


def _grid(grid, n_steps):
    if isinstance(grid, str):
        return jnp.asarray(time_grid(grid, n_steps), jnp.float32)
    return jnp.asarray(time_grid(grid), jnp.float32)


def _check_ids(ids, lengths, vocab: int, name: str, len_name: str, *, batch=None, allow_empty=True):
    """Host-side validation of an id array and its lengths; returns ``(ids int32 [b, n], lengths int32 [b])``."""
    if isinstance(ids, jax.core.Tracer):
        raise TypeError(f"{name}: expected concrete ids (call token2mel outside jit; it jits itself)")
    arr = np.asarray(ids)
    if arr.ndim != 2 or (batch is not None and arr.shape[0] != batch):
        raise ValueError(f"{name}: expected shape [{'b' if batch is None else batch}, n], got {arr.shape}")
    if not allow_empty and arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one token per row, got shape {arr.shape}")
    lens = check_lengths(lengths, arr.shape[0], arr.shape[1], len_name, minimum=0 if allow_empty else 1)
    check_ids(arr, lens, vocab, name)
    return jnp.asarray(arr, jnp.int32), jnp.asarray(lens, jnp.int32)


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


# ------------------------------------------------------------------------------------------------------ losses
def cfm_loss(
    model: nn.Module,
    params,
    x1: Float[Array, "b t m"],
    cond: MelCond,
    key: Key | None = None,
    *,
    streaming: bool = False,
    draws: LossDraws | None = None,
    loss: CFMLoss = COSYVOICE2_LOSS,
) -> tuple[Float[Array, ""], dict]:
    """The CFM loss of the flow's estimator (CosyVoice's ``compute_loss``) for given conditions.

    Args:
      model, params: the flow.
      x1: ``[b, t, m]`` target mel.
      cond: :class:`~fmjax.cond.MelCond` (``mask`` selects the frames in the loss).
      key: PRNG key for the draws not given in ``draws``.
      streaming: chunk-masked estimator attention (static).
      draws: inject ``t``, ``z``, ``keep``, ``prompt_len`` (parity tests).
      loss: the loss configuration (CosyVoice2's by default; the prompt prefix overwrites ``cond.prompt``).

    Returns:
      ``(loss, aux)`` as :class:`~fmjax.loss.CFMLoss`.
    """

    def velocity(t, x, c):
        return model.apply(params, x, c, t, streaming=streaming, method="estimate")[0]

    return loss(velocity, x1, cond.mask, cond, key, draws=draws)


def _batch_field(batch, name: str):
    if isinstance(batch, dict):
        if name not in batch:
            raise ValueError(f"batch: missing field {name!r} (have {sorted(batch)})")
        return batch[name]
    if not hasattr(batch, name):
        raise ValueError(f"batch: missing field {name!r} (a fmjax.data.batching.Batch or a dict with it)")
    return getattr(batch, name)


def flow_loss(
    model: nn.Module,
    params,
    batch,
    key: Key,
    *,
    loss: CFMLoss = COSYVOICE2_LOSS,
    chunk_prob: float = 0.5,
    draws: LossDraws | None = None,
) -> tuple[Float[Array, ""], dict]:
    """CosyVoice2's training loss for a padded batch, jit-friendly (one compilation per batch shape).

    Args:
      model, params: the flow.
      batch: a :class:`fmjax.data.batching.Batch` (or a dict) with ``tokens [b, u]`` int, ``token_len [b]``,
        ``mel [b, r·u, m]`` and ``spk [b, spk_embed_dim]``. Frames past ``r·token_len`` are padding and never
        reach the loss; rows of length 0 (filler) contribute nothing.
      key: PRNG key (split into the mask choice and the loss draws).
      loss: the CFM loss configuration (CosyVoice2's by default).
      chunk_prob: probability that this batch uses chunk masks in encoder and estimator (0.5; 0 or 1 fix it).
      draws: inject the loss's random numbers (tests).

    Returns:
      ``(loss, aux)`` with ``per_example [b]``, ``t [b]``, ``weight [b]`` (0 for filler rows) and the scalar
      ``chunk_masked`` (1.0 when this batch used chunk masks).
    """
    if not isinstance(chunk_prob, jax.core.Tracer) and not 0.0 <= chunk_prob <= 1.0:
        raise ValueError(f"chunk_prob: expected a probability in [0, 1], got {chunk_prob!r}")
    tokens, token_len = _batch_field(batch, "tokens"), _batch_field(batch, "token_len")
    mel, spk = _batch_field(batch, "mel"), _batch_field(batch, "spk")
    cfg = model.config
    b, u = jnp.shape(tokens)
    expected = (b, cfg.token_mel_ratio * u, cfg.mel_dim)
    if tuple(jnp.shape(mel)) != expected:
        raise ValueError(
            f"batch.mel: expected shape {expected} ({cfg.token_mel_ratio} frames per token), got {jnp.shape(mel)}"
        )
    if jnp.shape(token_len) != (b,):
        raise ValueError(f"batch.token_len: expected shape [{b}], got {jnp.shape(token_len)}")
    check_speaker_embedding(spk, b, cfg.spk_embed_dim, "batch.spk")
    key_mask, key_loss = jax.random.split(key)
    chunked = jax.random.uniform(key_mask) < chunk_prob

    def branch(chunk_masked: bool):
        def run(operands):
            params, tokens, token_len, mel, spk = operands
            spks = model.apply(params, spk, method="speaker")
            mu, mask = model.apply(params, tokens, token_len, chunk_masked=chunk_masked, method="encode")
            cond = MelCond(mu, spks, jnp.zeros_like(mu), mask)
            value, aux = cfm_loss(model, params, mel, cond, key_loss, streaming=chunk_masked, draws=draws, loss=loss)
            return value, {k: aux[k] for k in ("per_example", "t", "keep", "prompt_len")}

        return run

    operands = (params, jnp.asarray(tokens, jnp.int32), jnp.asarray(token_len, jnp.int32),
                jnp.asarray(mel, jnp.float32), jnp.asarray(spk, jnp.float32))
    value, aux = jax.lax.cond(chunked, branch(True), branch(False), operands)
    aux["weight"] = (jnp.asarray(token_len) > 0).astype(jnp.float32)
    aux["chunk_masked"] = chunked.astype(jnp.float32)
    return value, aux
