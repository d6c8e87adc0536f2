"""The flow protocol: what the pipelines (:mod:`fmjax.pipelines`), the trainer's corpus experiments and the
streaming code need from a token-to-mel flow.

Three classes implement it: :class:`fmjax.models.flow.CosyVoice2Flow` (conformer encoder + causal U-Net),
:class:`fmjax.models.flow_cv3.CosyVoice3Flow` (pre-lookahead conv + DiT) and
:class:`fmjax.models.token_unet.TokenUNet` (a token embedding + Matcha's non-causal U-Net; it does not stream).
They are Flax modules; their entry points are called through ``model.apply(params, ..., method="...")``.

Every streaming-capable entry point returns ``(y, cache)`` -- ``cache`` is None offline -- and, with
``return_aux=True``, ``(y, cache, aux)`` (see ``docs/DESIGN.md``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fmjax.nn.masks import ChunkSpec

__all__ = ["FlowConfig", "Flow", "check_flow"]


@runtime_checkable
class FlowConfig(Protocol):
    """The sizes a flow's config exposes (fields or properties).

    Attributes:
      vocab_size: speech-token vocabulary.
      spk_embed_dim: width of the input speaker embedding.
      spk_dim: width of the projected speaker vector (``MelCond.spks``).
      mel_dim: mel bins.
      token_mel_ratio: mel frames per token ``r``.
      chunk_size: streaming chunk ``C`` in tokens (also the chunk of the chunk-masked mode).
      pre_lookahead_len: look-ahead tokens ``L`` after a chunk.
      num_left_chunks: left chunks a chunk sees (``-1`` = all).
      causal: the flow has a chunk-masked mode and streams (False for the Matcha U-Net flow).
    """

    vocab_size: int
    spk_embed_dim: int

    @property
    def spk_dim(self) -> int: ...

    @property
    def mel_dim(self) -> int: ...

    @property
    def token_mel_ratio(self) -> int: ...

    @property
    def chunk_size(self) -> int: ...

    @property
    def pre_lookahead_len(self) -> int: ...

    @property
    def num_left_chunks(self) -> int: ...

    @property
    def causal(self) -> bool: ...

    def chunk_spec(self, chunked) -> ChunkSpec:
        """Token-level chunks of the chunk-masked mode for rows where ``chunked [b]`` is True (full context
        elsewhere)."""
        ...


@runtime_checkable
class Flow(Protocol):
    """A token-to-mel flow module.

    * ``speaker(embedding [b, spk_embed_dim]) -> spks [b, spk_dim]``;
    * ``encode(tokens [b, n], mask=None, *, context=None, context_lengths=None, chunk=None, cache=None,
      return_aux=False) -> (mu [b, r·n, m], cache)``: ``chunk`` a token-level :class:`ChunkSpec` (offline);
    * ``estimate(x [b, t, m], cond: MelCond, t [b], cache=None, *, return_aux=False) -> (v [b, t, m], cache)``:
      ``cond.chunk`` a frame-level :class:`ChunkSpec` (offline);
    * ``init_encoder_cache(batch, window_tokens)``, ``init_estimator_cache(batch, window_frames)``: empty streaming
      states (shape-only; every row at position 0).
    """

    config: Any

    def speaker(self, embedding): ...

    def encode(self, tokens, mask=None, *, context=None, context_lengths=None, chunk=None, cache=None,
               return_aux=False): ...

    def estimate(self, x, cond, t, cache=None, *, return_aux=False): ...

    def init_encoder_cache(self, batch: int, window_tokens: int, dtype=...): ...

    def init_estimator_cache(self, batch: int, window_frames: int, dtype=...): ...


def check_flow(model, name: str = "model") -> None:
    """Raises ``TypeError`` unless ``model`` implements :class:`Flow` with a :class:`FlowConfig`."""
    if not isinstance(model, Flow):
        missing = [m for m in ("config", "speaker", "encode", "estimate", "init_encoder_cache", "init_estimator_cache")
                   if not hasattr(model, m)]
        raise TypeError(f"{name}: expected a flow (fmjax.models.protocol.Flow: CosyVoice2Flow, CosyVoice3Flow, "
                        f"TokenUNet), got {type(model).__name__} lacking {missing}")
    if not isinstance(model.config, FlowConfig):
        missing = [a for a in ("vocab_size", "spk_embed_dim", "spk_dim", "mel_dim", "token_mel_ratio", "chunk_size",
                               "pre_lookahead_len", "num_left_chunks", "causal", "chunk_spec") if not hasattr(model.config, a)]
        raise TypeError(f"{name}.config: expected a flow config (fmjax.models.protocol.FlowConfig), got "
                        f"{type(model.config).__name__} lacking {missing}")
