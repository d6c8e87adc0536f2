"""CosyVoice2/3's fixed inference noise, reproduced without torch.

CosyVoice draws its ODE start ``z`` from one fixed tensor, ``torch.manual_seed(0); torch.randn(1, 80, 15000)``,
slicing ``z = rand_noise[:, :, :T]``, so a frame's noise never depends on how the utterance is chunked. This
module re-states torch's CPU normal sampler in numpy: MT19937 seeded like ``manual_seed`` (``init_genrand``),
24-bit uniforms ``(r & 0xFFFFFF) / 2**24``, then Box-Muller on blocks of 16 (``u1 = 1 − d[j]``, ``u2 = d[j+8]``,
cos into ``d[j]``, sin into ``d[j+8]``). torch evaluates log/sin/cos with SLEEF's 1-ulp vector functions, so the
result equals torch's tensor to about 5e-7 absolute (most values bit-exactly), far inside any parity tolerance.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["torch_randn_cpu", "cosyvoice_noise", "MAX_FRAMES"]

MAX_FRAMES = 15000  # 300 s at 50 frames/s: CosyVoice's cap, prompt included


def torch_randn_cpu(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """``torch.manual_seed(seed); torch.randn(*shape)`` (CPU, float32) in numpy, for sizes divisible by 16."""
    n = int(np.prod(shape))
    if n < 16 or n % 16:
        raise ValueError(f"shape: this re-statement covers sizes that are multiples of 16, got {shape} ({n})")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32):
        raise ValueError(f"seed: expected an int in [0, 2**32), got {seed!r}")
    bitgen = np.random.MT19937()
    bitgen._legacy_seeding(int(seed))  # init_genrand(seed), as torch's mt19937 does
    raw = bitgen.random_raw(n).astype(np.uint64)
    u = ((raw & 0xFFFFFF).astype(np.float64) * 2.0**-24).astype(np.float32).reshape(-1, 2, 8)
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - u[:, 0]))
    theta = np.float32(2.0 * np.pi) * u[:, 1]
    out = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    return out.reshape(shape).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise(m: int, frames: int) -> np.ndarray:
    z = torch_randn_cpu(0, (1, m, frames))[0].T  # torch (1, m, T) -> fmjax [T, m]
    z.setflags(write=False)
    return z


def cosyvoice_noise(length: int, m: int = 80, *, offset: int = 0) -> np.ndarray:
    """Frames ``[offset, offset + length)`` of CosyVoice's fixed noise, as ``[length, m]`` float32 (read-only).

    Raises:
      ValueError: the frames run past CosyVoice's 15000-frame tensor (300 s including the prompt).
    """
    if offset < 0 or length < 0 or offset + length > MAX_FRAMES:
        raise ValueError(
            f"length/offset: CosyVoice's fixed noise has {MAX_FRAMES} frames (300 s incl. prompt); "
            f"asked for frames [{offset}, {offset + length})"
        )
    return _noise(m, MAX_FRAMES)[offset : offset + length]
