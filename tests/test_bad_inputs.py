"""Bad-input matrix of the flow-matching core: one row per case, each asserting the exception type and that the
message names the argument (``fmjax.sample``, ``fmjax.CFMLoss``). Files: tests/test_bad_files.py; command lines:
tests/test_bad_cli.py. Rows for the streaming/pipeline entry points go here too."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.loss import CFMLoss, LossDraws
from fmjax.samplers import sample

B, T, M = 2, 6, 4


def _x():
    return np.random.default_rng(0).normal(size=(B, T, M)).astype(np.float32)


def _with(value, index=(0, 1, 2)):
    x = _x()
    x[index] = value
    return x


def _cond(**changes):
    c = dict(mu=np.zeros((B, T, M), np.float32), spks=np.zeros((B, 3), np.float32),
             prompt=np.zeros((B, T, M), np.float32), mask=np.ones((B, T), np.float32))
    c.update(changes)
    return MelCond(**c)


def _mu_nan():
    mu = np.zeros((B, T, M), np.float32)
    mu[1, 2, 3] = np.nan
    return mu


def velocity(t, x, c):
    return -x


GRID = np.linspace(0.0, 1.0, 4)

# (id, call, exception type, pattern the message must match: it names the argument)
SAMPLE_ROWS = [
    ("x0-nan", lambda: sample(velocity, _with(np.nan), None, GRID), ValueError, r"^x0: expected finite values, got 1 NaN"),
    ("x0-inf", lambda: sample(velocity, _with(np.inf), None, GRID), ValueError, r"^x0: .*1 inf"),
    ("x0-int", lambda: sample(velocity, np.ones((B, T, M), np.int32), None, GRID), TypeError,
     r"^x0: expected a floating array"),
    ("x0-bool", lambda: sample(velocity, np.ones((B, T), bool), None, GRID), TypeError, r"^x0: "),
    ("x0-scalar", lambda: sample(velocity, np.float32(1.0), None, GRID), ValueError, r"^x0: .*leading batch axis"),
    ("cond-dict-nan", lambda: sample(velocity, _x(), {"mu": _mu_nan()}, GRID), ValueError, r"^cond\['mu'\]: .*NaN"),
    ("cond-melcond-nan", lambda: sample(velocity, _x(), _cond(mu=_mu_nan()), GRID), ValueError, r"^cond\.mu: .*NaN"),
    ("cond-spks-inf", lambda: sample(velocity, _x(), _cond(spks=np.full((B, 3), np.inf, np.float32)), GRID),
     ValueError, r"^cond\.spks: .*6 inf"),
    ("velocity-shape", lambda: sample(lambda t, x, c: x[:, :1], _x(), None, GRID), ValueError,
     r"^velocity: expected an output of the state's shape \(2, 6, 4\), got \(2, 1, 4\)"),
    ("velocity-tuple", lambda: sample(lambda t, x, c: (x, {}), _x(), None, GRID), ValueError,
     r"^velocity: .*\(v, aux\) tuple"),
    ("grid-nan", lambda: sample(velocity, _x(), None, np.array([0.0, np.nan, 1.0])), ValueError, r"^grid: "),
    ("grid-decreasing", lambda: sample(velocity, _x(), None, np.array([0.0, 0.7, 0.3, 1.0])), ValueError,
     r"^grid: .*increasing"),
    ("solver", lambda: sample(velocity, _x(), None, GRID, solver="rk5"), ValueError, r"^solver: "),
]

LOSS = CFMLoss()
KEY = jax.random.key(0)


def _draws(**kw):
    return LossDraws(**kw)


LOSS_ROWS = [
    ("x1-nan", lambda: LOSS(velocity, _with(np.nan), key=KEY), ValueError, r"^x1: expected finite values, got 1 NaN"),
    ("x1-inf", lambda: LOSS(velocity, _with(-np.inf), key=KEY), ValueError, r"^x1: .*1 inf"),
    ("x1-int", lambda: LOSS(velocity, np.ones((B, T, M), np.int32), key=KEY), TypeError, r"^x1: expected a floating"),
    ("x1-rank", lambda: LOSS(velocity, np.ones((B,), np.float32), key=KEY), ValueError, r"^x1: expected \[b, \.\.\., m\]"),
    ("mask-half", lambda: LOSS(velocity, _x(), np.full((B, T), 0.5, np.float32), key=KEY), ValueError,
     r"^mask: expected only 0/1 values"),
    ("mask-shape", lambda: LOSS(velocity, _x(), np.ones((B, T + 1), np.float32), key=KEY), ValueError,
     r"^mask: expected shape \(2, 6\)"),
    ("mask-empty-row", lambda: LOSS(velocity, _x(), np.concatenate([np.ones((1, T)), np.zeros((1, T))]), key=KEY),
     ValueError, r"^mask: an example has no valid frame"),
    ("cond-nan", lambda: LOSS(velocity, _x(), cond=_cond(mu=_mu_nan()), key=KEY), ValueError, r"^cond\.mu: .*NaN"),
    ("cond-batch", lambda: LOSS(velocity, _x(), cond={"spk": np.zeros((B + 1, 3), np.float32)}, key=KEY), ValueError,
     r"^cond: every leaf needs the batch axis first"),
    ("draws-t-above-1", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(t=np.array([0.5, 1.5]))), ValueError,
     r"^draws\.t: expected values in \[0\.0, 1\.0\], got min 0\.5, max 1\.5"),
    ("draws-t-negative", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(t=np.array([-0.1, 0.5]))), ValueError,
     r"^draws\.t: expected values in \[0\.0, 1\.0\]"),
    ("draws-t-nan", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(t=np.array([np.nan, 0.5]))), ValueError,
     r"^draws\.t: expected finite values"),
    ("draws-t-count", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(t=np.array([0.5]))), ValueError,
     r"^draws\.t: expected 2 values"),
    ("draws-z-nan", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(z=_with(np.nan))), ValueError,
     r"^draws\.z: expected finite values"),
    ("draws-z-int", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(z=np.ones((B, T, M), np.int32))), TypeError,
     r"^draws\.z: expected a floating array"),
    ("draws-z-shape", lambda: LOSS(velocity, _x(), key=KEY, draws=_draws(z=np.ones((B, T, 1), np.float32))), ValueError,
     r"^draws\.z: expected shape"),
    ("draws-prompt-len-float", lambda: LOSS(velocity, _x(), cond=_cond(), key=KEY,
                                            draws=_draws(prompt_len=np.array([1.5, 0.0]))), TypeError,
     r"^draws\.prompt_len: expected integer"),
    ("draws-type", lambda: LOSS(velocity, _x(), key=KEY, draws={"t": 0.5}), TypeError, r"^draws: expected a LossDraws"),
    ("key-missing", lambda: LOSS(velocity, _x()), ValueError, r"^key: a PRNG key is needed"),
    ("velocity-shape", lambda: LOSS(lambda t, x, c: x[..., :1], _x(), key=KEY), ValueError,
     r"^velocity: expected an output of shape"),
    ("cfg-rate", lambda: CFMLoss(cfg_rate=1.0), ValueError, r"^cfg_rate: "),
    ("prompt-prob", lambda: CFMLoss(prompt_prob=-0.1), ValueError, r"^prompt_prob: "),
]


@pytest.mark.parametrize("call, error, pattern", [r[1:] for r in SAMPLE_ROWS + LOSS_ROWS],
                         ids=[f"sample-{r[0]}" for r in SAMPLE_ROWS] + [f"loss-{r[0]}" for r in LOSS_ROWS])
def test_bad_input_raises_naming_the_argument(call, error, pattern):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error or issubclass(type(info.value), error)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_checks_are_skipped_under_jit_and_off_on_request():
    """Under jit the arrays are tracers: no host check (and no error) -- the documented limit; dtype checks remain."""
    x = _with(np.nan)
    out = jax.jit(lambda x0: sample(velocity, x0, None, GRID)[0])(x)
    assert np.isnan(np.asarray(out)).sum() == 1  # NaN in, NaN out, at the same place: nothing hid it
    assert np.isnan(np.asarray(sample(velocity, x, None, GRID, check_inputs=False)[0])).sum() == 1
    with pytest.raises(TypeError, match="x0"):
        jax.jit(lambda x0: sample(velocity, x0, None, GRID)[0])(np.ones((B, T, M), np.int32))
    loss, _ = jax.jit(lambda x1: LOSS(velocity, x1, key=KEY))(x)
    assert np.isnan(float(loss))


def test_good_inputs_pass_and_bool_masks_are_fine():
    x1, _ = sample(velocity, _x(), _cond(), GRID)
    assert np.isfinite(np.asarray(x1)).all()
    loss, _ = LOSS(velocity, _x(), np.ones((B, T), bool), key=KEY, draws=_draws(t=np.array([0.0, 1.0])))
    assert np.isfinite(float(loss))
    loss, _ = LOSS(velocity, jnp.asarray(_x()), key=KEY)  # device arrays are checked too (no host copy needed)
    assert np.isfinite(float(loss))
