"""Dimension legend and array type aliases shared by the whole library.

Every public function documents its shapes with these letters, and einsum strings use them too:

==========  ===============================================================
letter      meaning
==========  ===============================================================
``b``       batch (examples; with classifier-free guidance by batch doubling, 2b rows)
``t``       frames (mel frames at 50 Hz, or tokens at 25 Hz where stated)
``m``       mel bins (80 for CosyVoice/Matcha)
``d``       model width (channels)
``h``       attention heads
``k``       head dim
``n``       ODE steps (a time grid has n + 1 points)
``w``       cache window (frames held by a fixed-window K/V ring buffer)
``s``       speaker-embedding width
``l``       layers (stacked caches), ``c`` chunk length, ``p`` points (toy 2-D data)
==========  ===============================================================

Layout conventions (different from the PyTorch originals, which are channel-first for convolutions):

* Every sequence tensor is **time-major, channels last**: mel ``[b, t, m]``, hidden ``[b, t, d]``.
  Converters transpose torch weights; parity tests transpose torch activations.
* A frame mask is ``[b, t]`` of 0/1 (float or bool); 1 marks a valid frame.
* Time ``t`` of the flow runs from 0 (noise) to 1 (data); per-example times are ``[b]``.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Array, Bool, Complex, Float, Int, PRNGKeyArray

PyTree = Any
Key = PRNGKeyArray

__all__ = ["Array", "Bool", "Complex", "Float", "Int", "Key", "PyTree"]
