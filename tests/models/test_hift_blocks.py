"""HiFT blocks: polyphase transposed conv == torch ConvTranspose1d; Snake formula; ResBlock vs torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn.hift_blocks import ResBlock, Snake, UpsampleConvTranspose1d


@pytest.mark.parametrize("k,u", [(16, 8), (11, 5), (7, 3), (4, 2)])
def test_polyphase_conv_transpose_matches_zero_stuffing(k, u):
    """Same result as the textbook transposed conv: scatter x[i]·W[j] to output i·u + j - p."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 5)).astype(np.float32)
    w = rng.standard_normal((k, 5, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    p = (k - u) // 2
    full = np.zeros((2, (9 - 1) * u + k, 3))
    for i in range(9):
        for j in range(k):
            full[:, i * u + j] += x[:, i] @ w[j]
    want = full[:, p : p + 9 * u] + bias
    m = UpsampleConvTranspose1d(3, k, u, p)
    got = m.apply({"params": {"kernel": w, "bias": bias}}, x)
    assert got.shape == (2, 9 * u, 3)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_snake_formula():
    x = jnp.linspace(-3, 3, 14).reshape(1, 7, 2)
    alpha = jnp.asarray([0.5, 2.0])
    got = Snake().apply({"params": {"alpha": alpha}}, x)
    want = x + np.sin(alpha * x) ** 2 / (alpha + 1e-9)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.torch
def test_resblock_and_conv_transpose_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 40, 6)).astype(np.float32)
    block = ResBlock(7, (1, 3, 5))
    params = jax.tree_util.tree_map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(np.prod(a.shape[:-1])),  # fan-in scaled
        jax.eval_shape(block.init, jax.random.key(0), jnp.zeros((1, 40, 6))),
    )
    got = block.apply(params, x)

    def tconv(w, b, d):
        return lambda h: torch.nn.functional.conv1d(h, torch.from_numpy(np.asarray(w)).permute(2, 1, 0),
                                                    torch.from_numpy(np.asarray(b)), padding=d * 3, dilation=d)

    def snake(a):
        a = torch.from_numpy(np.asarray(a))[None, :, None]
        return lambda h: h + (1.0 / (a + 1e-9)) * torch.sin(h * a) ** 2

    p = params["params"]
    h = torch.from_numpy(x).transpose(1, 2)
    for j, d in enumerate((1, 3, 5)):
        t = snake(p[f"activations1_{j}"]["alpha"])(h)
        t = tconv(p[f"convs1_{j}"]["kernel"], p[f"convs1_{j}"]["bias"], d)(t)
        t = snake(p[f"activations2_{j}"]["alpha"])(t)
        t = tconv(p[f"convs2_{j}"]["kernel"], p[f"convs2_{j}"]["bias"], 1)(t)
        h = h + t
    np.testing.assert_allclose(np.asarray(got), h.transpose(1, 2).numpy(), atol=1e-5)

    w = rng.standard_normal((11, 6, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(w).permute(1, 2, 0),
                                               torch.from_numpy(b), stride=5, padding=3)
    got = UpsampleConvTranspose1d(4, 11, 5, 3).apply({"params": {"kernel": w, "bias": b}}, x)
    np.testing.assert_allclose(np.asarray(got), ref.transpose(1, 2).numpy(), atol=1e-5)
