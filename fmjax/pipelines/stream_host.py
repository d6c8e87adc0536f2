"""The host side of :class:`fmjax.pipelines.stream.Token2MelStream`: a numpy mirror of the device FIFO counts (so the
frames a step emits are known without reading the device) and the look-ahead contract check."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["StreamHost", "host_advance", "check_lookahead"]


class StreamHost(NamedTuple):
    """Host-side mirror of the FIFO counts and the contracts (numpy, never read from the device).

    Attributes:
      held, done, prompt_len: ``[b]`` as :class:`StreamRows`.
      expected: per row, the look-ahead tokens promised for the next positions (checked when they arrive).
    """

    held: np.ndarray
    done: np.ndarray
    prompt_len: np.ndarray
    expected: tuple


def host_advance(cfg, host: StreamHost, n, n_ahead, final) -> tuple[StreamHost, np.ndarray]:
    """The device step's FIFO arithmetic on the host: new counts and the frames emitted per row."""
    c, r, la = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len
    held, done = host.held + n, host.done.copy()
    known = held + np.where(final, 0, n_ahead)
    emitted = np.zeros_like(held)
    while True:
        ready = ((held >= c) & (known >= c + la)) | (final & (held > 0))
        if not ready.any():
            break
        valid = np.where(ready, np.minimum(held, c), 0)
        skip = np.clip(r * host.prompt_len - r * done, 0, r * c)
        emitted += np.where(ready, np.maximum(r * valid - skip, 0), 0)
        held = np.where(ready, np.maximum(held - c, 0), held)
        known = np.where(ready, np.maximum(known - c, 0), known)
        done = np.where(ready, done + c, done)
    return host._replace(held=held, done=done), emitted


def check_lookahead(state: StreamState, tokens, n, lookahead, n_ahead) -> tuple:
    """Checks the tokens (and the new look-ahead) against the look-ahead promised earlier; returns the new
    promises per row."""
    out = []
    for i, promised in enumerate(state.host.expected):
        got = tokens[i, : n[i]]
        k = min(len(promised), len(got))
        bad = np.flatnonzero(promised[:k] != got[:k])
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"tokens: row {i}, stream position {int(state.received[i]) + j}: got token "
                             f"{int(got[j])}, but the look-ahead of an earlier step promised {int(promised[j])}")
        rest = promised[k:]  # promises beyond the tokens given now: they must agree with the new look-ahead
        ahead = lookahead[i, : n_ahead[i]].astype(np.int64)
        k = min(len(rest), len(ahead))
        bad = np.flatnonzero(rest[:k] != ahead[:k])
        if bad.size:
            j = int(bad[0])
            raise ValueError(f"lookahead: row {i}, stream position {int(state.received[i] + n[i]) + j}: got token "
                             f"{int(ahead[j])}, but an earlier look-ahead promised {int(rest[j])}")
        out.append(ahead if len(ahead) >= len(rest) else rest)
    return tuple(out)
