"""Config system: every preset builds and eval_shape-initialises; --set is type-checked; JSON output."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

from train.__main__ import main
from train.config import Config, TrainConfig, apply_overrides, config_to_dict, leaf_keys, write_config
from train.experiment import CONFIG_DIR, load_experiment
from train.optim import make_optimizer
from train.state import abstract_state
from train.experiments import build  # noqa: E402

EXPERIMENTS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
PRESETS = [(name, preset) for name in EXPERIMENTS for preset in load_experiment(name).PRESETS]


def test_config_dir_has_experiments():
    assert "toy2d" in EXPERIMENTS


@pytest.mark.parametrize("name,preset", PRESETS)
def test_every_preset_builds_and_eval_shape_initialises(name, preset):
    module = load_experiment(name)
    cfg = module.get_config(preset)
    assert isinstance(cfg, Config) and cfg.experiment == name
    hash(cfg)  # frozen all the way down: usable as a static argument
    exp = build(cfg)
    state = abstract_state(exp.init_params, make_optimizer(cfg.optim, cfg.train.steps), jax.random.key(0))
    leaves = jax.tree.leaves(state.params)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(x.size for x in leaves) > 0
    assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)


def test_unknown_preset_and_config_rejected():
    with pytest.raises(ValueError, match="preset"):
        load_experiment("toy2d").get_config("huge")
    with pytest.raises(ValueError, match="--config.*toy2d"):
        load_experiment("no_such_experiment")


def test_set_overrides_parse_against_field_types():
    cfg = load_experiment("toy2d").get_config("tiny")
    out = apply_overrides(cfg, ["optim.lr=1e-3", "train.steps=7", "train.fsdp=true", "optim.weight_decay=0",
                                "train.compute_dtype=bfloat16", "data.source=checkerboard", "train.init_from=/x"])
    assert out.optim.lr == 1e-3 and out.train.steps == 7 and out.train.fsdp is True
    assert out.optim.weight_decay == 0.0 and isinstance(out.optim.weight_decay, float)
    assert out.train.compute_dtype == "bfloat16" and out.data.source == "checkerboard"
    assert out.train.init_from == "/x"
    assert cfg.train.steps != 7  # the original is untouched (frozen)


@pytest.mark.parametrize("item,match", [
    ("train.stepz=3", r"unknown key; valid keys are: .*train\.steps"),
    ("model.hidden.x=3", "unknown key"),
    ("nothing=1", "unknown key"),
    ("train=3", "is a section"),
    ("train.steps=1.5", r"train\.steps: expected int, got '1.5'"),
    ("train.steps=ten", r"expected int"),
    ("train.steps=true", r"expected int"),
    ("optim.lr=fast", r"optim\.lr: expected float"),
    ("train.fsdp=maybe", r"expected bool"),
    ("train.compute_dtype=float16", r"expected one of 'float32', 'bfloat16'"),
    ("train.steps", "expected key=value"),
    ("train.steps=0", r"train\.steps: expected an int >= 1"),  # the dataclass's own validation
    ("data.source=spirals", "distribution"),
])
def test_set_rejects_unknown_keys_and_wrong_types(item, match):
    cfg = load_experiment("toy2d").get_config("tiny")
    with pytest.raises(ValueError, match=match):
        apply_overrides(cfg, [item])


def test_tuple_and_optional_fields():
    @dataclasses.dataclass(frozen=True)
    class D:
        sizes: tuple[int, ...] = (1, 2)
        pair: tuple[int, float] = (1, 2.0)
        name: str | None = None

    cfg = Config(experiment="x", model=None, data=D())
    out = apply_overrides(cfg, ["data.sizes=(3, 4, 5)", "data.pair=[2, 0.5]", "data.name=abc"])
    assert out.data == D((3, 4, 5), (2, 0.5), "abc")
    assert apply_overrides(out, ["data.name=None"]).data.name is None
    with pytest.raises(ValueError, match="data.sizes"):
        apply_overrides(cfg, ["data.sizes=(1, 'a')"])
    with pytest.raises(ValueError, match="data.pair"):
        apply_overrides(cfg, ["data.pair=(1, 2, 3)"])


def test_resolved_config_json_round_trip(tmp_path):
    cfg = apply_overrides(load_experiment("toy2d").get_config("tiny"), ["train.steps=9"])
    write_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data == config_to_dict(cfg) and data["train"]["steps"] == 9 and data["experiment"] == "toy2d"
    assert set(leaf_keys(cfg)) >= {"train.steps", "optim.lr", "model.hidden", "data.target"}
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temporary file


def test_trainer_sections_validate():
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="optim.warmup_steps: expected fewer than train.steps=10"):
        make_optimizer(load_experiment("toy2d").get_config("tiny").optim.__class__(warmup_steps=10), 10)


def test_cli_rejects_bad_set_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse-style usage error, no traceback
        main(["--config", "train/configs/toy2d.py", "--workdir", str(tmp_path), "--set", "train.stepz=3"])
    assert exit_info.value.code == 2
    assert "error: --set train.stepz: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()
    assert main(["--config", "toy2d", "--list-keys"]) == 0
    assert "train.steps" in capsys.readouterr().out.split()


def test_overrides_apply_together_so_coupled_fields_can_change():
    from train.configs import token2mel

    keys = ["model.flow.encoder.input_size=32", "model.flow.encoder.output_size=32"]
    cfg = apply_overrides(token2mel.get_config("tiny"), keys)  # one at a time, either order would be refused
    assert (cfg.model.flow.encoder.input_size, cfg.model.flow.encoder.output_size) == (32, 32)
    with pytest.raises(ValueError, match="input_size"):
        apply_overrides(token2mel.get_config("tiny"), keys[:1])
    assert apply_overrides(token2mel.get_config("tiny"), ["train.steps=5", "train.steps=7"]).train.steps == 7
