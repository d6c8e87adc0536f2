"""Path identities of the conditional-OT / rectified paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.paths import CondOTPath, rectified_path


@pytest.mark.parametrize("sigma", [0.0, 1e-4, 1e-6, 0.1])
def test_path_endpoints_and_derivative(sigma):
    k0, k1 = jax.random.split(jax.random.key(0))
    x0, x1 = jax.random.normal(k0, (7, 5)), jax.random.normal(k1, (7, 5))
    path = CondOTPath(sigma)
    np.testing.assert_allclose(path.interpolate(x0, x1, 0.0), x0, atol=1e-7)
    np.testing.assert_allclose(path.interpolate(x0, x1, 1.0), x1 + sigma * x0, atol=1e-6)
    for t in (0.0, 0.3, 0.9):
        _, dxdt = jax.jvp(lambda s: path.interpolate(x0, x1, s), (jnp.float32(t),), (jnp.float32(1.0),))
        np.testing.assert_allclose(dxdt, path.velocity(x0, x1, t), atol=1e-6)  # u_t == d/dt x_t


def test_rectified_is_straight_and_vmaps():
    path = rectified_path()
    assert path.sigma_min == 0.0
    x0, x1 = jnp.zeros((4, 3)), jnp.ones((4, 3))
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    xt = jax.vmap(path.interpolate)(x0, x1, t)
    np.testing.assert_allclose(xt, np.repeat(np.asarray(t)[:, None], 3, 1), atol=0)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "0.1", True])
def test_path_rejects_bad_sigma(bad):
    with pytest.raises(ValueError, match="sigma_min"):
        CondOTPath(bad)
