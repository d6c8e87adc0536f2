"""The second time (MelCond.r) in the causal U-Net and the DiT: a plain flow is unchanged (no new params, r rejected,
old checkpoints load), a student made from a teacher computes the teacher bit for bit (zero-initialised embedding),
r = None is r = t, r changes a trained student's output, the jvp through the estimator matches finite differences,
and bad r is refused naming cond.r."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import meanflow
from fmjax.checkpoint import leaf_table, load_flow, save_flow_checkpoint
from fmjax.models.causal_unet import CausalConditionalDecoder
from fmjax.models.dit import DiT
from fmjax.models.flow import CosyVoice2Flow
from fmjax.nn.masks import ChunkSpec
from tests.models import test_causal_unet as unet_tests
from tests.models import test_dit as dit_tests
from tests.models.test_flow import tiny_flow

CASES = {"causal_unet": (CausalConditionalDecoder, unet_tests), "dit": (DiT, dit_tests)}
EMBED = {"causal_unet": "time_mlp_r", "dit": "time_embed_r"}


def _student(name, randomise: bool):
    """``(teacher module, teacher params, student module, student params, inputs)``; the student's new embedding is
    the fresh zero-output one, or (``randomise``) random, as after training."""
    cls, mod = CASES[name]
    x, cond, t = mod.tiny_inputs()
    cond = cond._replace(chunk=ChunkSpec(jnp.array([4, 1000]), jnp.array([-1, -1])))  # a chunked and a full row
    teacher, params = cls(mod.TINY), mod.tiny_params()
    student = cls(dataclasses.replace(mod.TINY, mean_flow=True))
    shapes = jax.eval_shape(student.init, jax.random.key(0), x, cond, t)["params"][EMBED[name]]  # no compiling
    rng = np.random.default_rng(3)

    def draw(path, leaf):  # the fresh embedding: random linear_1, zero linear_2 (as zero_out); all random if trained
        if randomise or "linear_1" in jax.tree_util.keystr(path):
            return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), jnp.float32)
        return jnp.zeros(leaf.shape, jnp.float32)

    fresh = jax.tree_util.tree_map_with_path(draw, shapes)
    sparams = {"params": {**params["params"], EMBED[name]: fresh}}
    return teacher, params, student, sparams, (x, cond, t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_flow_unchanged_and_student_from_teacher_is_the_teacher(name):
    """mean_flow=False (the default) has exactly the old tree; the zero-initialised student equals the teacher bit
    for bit (ragged rows, a chunk-masked and a full-context row, prompts) at r = None and at any r >= t."""
    teacher, params, student, sparams, (x, cond, t) = _student(name, randomise=False)
    assert not any(EMBED[name] in k for k in leaf_table(params))
    shapes = jax.eval_shape(teacher.init, jax.random.key(0), x, cond, t)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    v_teacher = jax.jit(teacher.apply)(params, x, cond, t)[0]
    apply = jax.jit(student.apply)
    for r in (None, t, jnp.clip(t + 0.4, 0, 1)):
        v = apply(sparams, x, cond._replace(r=r), t)[0]
        np.testing.assert_array_equal(np.asarray(v), np.asarray(v_teacher))  # bit for bit: t_emb + 0
    with pytest.raises(ValueError, match=r"cond\.r: this estimator is a plain flow"):
        teacher.apply(params, x, cond._replace(r=t), t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_student_r_none_is_r_equal_t_and_r_matters(name):
    _, _, student, sparams, (x, cond, t) = _student(name, randomise=True)
    apply = jax.jit(student.apply)
    v_none = apply(sparams, x, cond, t)[0]
    np.testing.assert_array_equal(np.asarray(apply(sparams, x, cond._replace(r=t), t)[0]), np.asarray(v_none))
    v_far = apply(sparams, x, cond._replace(r=jnp.ones_like(t)), t)[0]
    assert float(jnp.abs(v_far - v_none).max()) > 1e-2


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_interval_end_names_cond_r(name):
    _, _, student, sparams, (x, cond, t) = _student(name, randomise=False)
    with pytest.raises(ValueError, match=r"cond\.r: expected interval ends r >= t .* rows \[0\]"):
        student.apply(sparams, x, cond._replace(r=jnp.stack([t[0] - 0.1, t[1]])), t)
    with pytest.raises(ValueError, match=r"cond\.r: expected shape \[2\]"):
        student.apply(sparams, x, cond._replace(r=jnp.ones((3,))), t)
    with pytest.raises(TypeError, match="mean_flow: expected a bool"):
        dataclasses.replace(CASES[name][1].TINY, mean_flow=1)


def test_jvp_through_the_causal_unet_matches_finite_differences():
    """The MeanFlow target through the mel estimator (time embeddings at scale 1000, the r embedding, masks) vs a
    central difference in float64 with h = 1e-6 (truncation ~h²·(1000 rad)³/6 ~ 2e-4 of the embedding's scale,
    rounding ~1e-16/h): agreement to 1e-3 of the target's magnitude."""
    with jax.enable_x64(True):
        _, _, student, sparams, (x, cond, t) = _student("causal_unet", randomise=True)
        f64 = lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
        sparams, x, cond, t = (jax.tree_util.tree_map(f64, a) for a in (sparams, x, cond, t))
        r = jnp.clip(t + 0.3, 0.0, 1.0)
        v = jax.random.normal(jax.random.key(4), x.shape, jnp.float64)

        apply = jax.jit(student.apply)

        def velocity(t_, x_, c_, r=None):
            return apply(sparams, x_, c_._replace(r=r), t_)[0]

        _, target = jax.jit(lambda: meanflow.mean_flow_target(velocity, x, cond, t, r, v))()
        h = 1e-6
        fd = (velocity(t + h, x + h * v, cond, r) - velocity(t - h, x - h * v, cond, r)) / (2 * h)
        expected = v - (t - r)[:, None, None] * fd
        scale = float(jnp.abs(expected).max())
        assert float(jnp.abs(target - expected).max()) < 1e-3 * scale


def test_checkpoints_old_plain_config_loads_and_student_round_trips(tmp_path):
    """A flow checkpoint whose config.json predates mean_flow loads as a plain flow; a student checkpoint loads as a
    student with its params (the r embedding included)."""
    model, params = tiny_flow(2)
    path = save_flow_checkpoint(tmp_path / "plain", model.config, params)
    data = json.loads((path / "config.json").read_text())
    assert data["estimator"].pop("mean_flow") is False
    (path / "config.json").write_text(json.dumps(data))
    loaded = load_flow(path)
    assert not meanflow.is_student(loaded.model) and loaded.model.config == model.config
    student = CosyVoice2Flow(meanflow.student_config(model.config))
    sparams = meanflow.student_params(student, params, jax.random.key(1))
    emb = sparams["params"]["decoder"]["time_mlp_r"]
    assert not np.any(np.asarray(emb["linear_2"]["kernel"])) and np.any(np.asarray(emb["linear_1"]["kernel"]))
    spath = save_flow_checkpoint(tmp_path / "student", student.config, sparams)
    back = load_flow(spath)
    assert meanflow.is_student(back.model)
    for a, b in zip(jax.tree_util.tree_leaves(sparams), jax.tree_util.tree_leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(TypeError, match="student: expected a flow whose estimator config has mean_flow=True"):
        meanflow.student_params(model, params, jax.random.key(1))
    with pytest.raises(ValueError, match="teacher_params: expected the student's tree"):
        meanflow.student_params(student, sparams, jax.random.key(1))
