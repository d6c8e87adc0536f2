"""Command lines: bad arguments are one-line argparse-style usage errors (exit 2, no traceback, nothing written),
and every ``--help`` explains every option with its default. ``python -m fmjax.cli`` rows live in tests/test_cli.py."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from fmjax import ablate
from train import ablate_corpus
from train.__main__ import main as train_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _usage_error(capsys, call, prog: str) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), err
    return last


TRAIN_ROWS = [
    ("unknown-key", ["--set", "train.stepz=3"], r"--set train\.stepz: unknown key"),
    ("not-key-value", ["--set", "train.steps"], r"--set: expected key=value"),
    ("nan-int", ["--set", "train.steps=nan"], r"--set train\.steps: expected int, got 'nan'"),
    ("inf-float", ["--set", "optim.lr=1e999"], r"--set optim\.lr: expected a finite float, got '1e999'"),
    ("float-for-int", ["--set", "train.batch_size=2.5"], r"--set train\.batch_size: expected int"),
    ("negative", ["--set", "train.steps=-3"], r"train\.steps: expected an int >= 1, got -3"),
    ("bad-lr", ["--set", "optim.lr=0"], r"optim\.lr: expected a positive learning rate"),
    ("literal", ["--set", "train.compute_dtype=float16"], r"--set train\.compute_dtype: expected one of"),
    ("section", ["--set", "optim=1"], r"--set optim: is a section"),
    ("warmup", ["--set", "train.steps=10"], r"optim\.warmup_steps: expected fewer than train\.steps=10"),
    ("config", ["--config", "nope"], r"--config: expected a config file or one of"),
    ("preset", ["--preset", "huge"], r"--preset: expected one of \['tiny', 'default'\], got 'huge'"),
    ("workdir-file", ["--workdir", "{file}"], r"--workdir: expected a directory, .* is a file"),
    ("workdir-missing", ["--workdir", None], r"--workdir: required"),
    ("init-from-missing", ["--init-from", "{missing}"], r"--init-from / train\.init_from: .* does not exist"),
    ("unknown-flag", ["--stepz", "3"], r"unrecognized arguments: --stepz 3"),
]


@pytest.mark.parametrize("args, pattern", [r[1:] for r in TRAIN_ROWS], ids=[r[0] for r in TRAIN_ROWS])
def test_train_cli_usage_errors(tmp_path, capsys, args, pattern):
    (tmp_path / "file").write_text("x")
    subs = {"{file}": str(tmp_path / "file"), "{missing}": str(tmp_path / "missing")}
    argv = ["--config", "toy2d", "--workdir", str(tmp_path / "run"), "--no-progress"]
    if args[-1] is None:  # drop the workdir
        argv, args = ["--config", "toy2d"], []
    argv += [subs.get(a, a) for a in args]
    last = _usage_error(capsys, lambda: train_main(argv), "python -m train")
    assert re.search(pattern, last), last
    assert not (tmp_path / "run").exists()  # nothing written


ABLATE_ROWS = [
    ("steps-text", ["--steps", "1,a"], r"argument --steps: expected comma-separated ints >= 1"),
    ("steps-zero", ["--steps", "0,2"], r"steps: expected ints >= 1"),
    ("cfg-nan", ["--cfg", "nan"], r"argument --cfg: expected comma-separated finite weights, got 'nan'"),
    ("grid", ["--grids", "spiral"], r"grids: expected names from"),
    ("solver", ["--solvers", "rk5"], r"solver: expected one of"),
    ("t-sampler", ["--t-samplers", "gauss"], r"t_sampler|t-sampler"),
    ("train-steps", ["--train-steps", "0"], r"argument --train-steps: expected an int >= 1, got 0"),
    ("source", ["--source", "spiral"], r"spiral"),
    ("seeds", ["--seeds", ""], r"argument --seeds: expected comma-separated"),
]


@pytest.mark.parametrize("args, pattern", [r[1:] for r in ABLATE_ROWS], ids=[r[0] for r in ABLATE_ROWS])
def test_ablate_cli_usage_errors(tmp_path, capsys, args, pattern):
    last = _usage_error(capsys, lambda: ablate.main(["--out", str(tmp_path / "out"), *args]), "python -m fmjax.ablate")
    assert re.search(pattern, last), last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--val-repeats", "0"], r"argument --val-repeats: expected an int >= 1, got 0"),
    (["--steps", "2,x"], r"argument --steps: expected comma-separated ints"),
    (["--out", "{file}"], r"--out: expected a directory"),
], ids=["val-repeats", "steps", "out-file"])
def test_ablate_corpus_cli_usage_errors(tmp_path, capsys, args, pattern):
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "{file}" else a for a in args]
    argv = ["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "models"), *args]
    last = _usage_error(capsys, lambda: ablate_corpus.main(argv), "python -m train.ablate_corpus")
    assert re.search(pattern, last), last
    assert not (tmp_path / "models").exists()


def _help(call) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("name", ["train", "fmjax.cli token2wav", "fmjax.ablate", "train.ablate_corpus"])
def test_help_explains_every_option_with_its_default(name):
    from fmjax.cli import main as cli_main
    from train.__main__ import build_parser

    call = {"train": lambda: build_parser().parse_args(["--help"]),
            "fmjax.cli token2wav": lambda: cli_main(["token2wav", "--help"]),
            "fmjax.ablate": lambda: ablate.main(["--help"]),
            "train.ablate_corpus": lambda: ablate_corpus.main(["--help"])}[name]
    text = _help(call)
    assert text.startswith(f"usage: python -m {name} ")  # the module's name, not ablate.py
    options = re.findall(r"^  (--[a-z-]+)(.*(?:\n {6,}.*)*)", text, re.M)
    assert len(options) >= 5
    for flag, body in options:
        body = " ".join(body.split())
        if flag == "--help":
            continue
        assert re.search(r"default|required|exit", body), f"{name} {flag}: no default in {body!r}"
    if "ablate" in name:
        assert "comma-separated" in text and "space-separated" in text


def test_train_cli_in_a_process_is_quiet_and_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "train", "--config", "toy2d", "--workdir", str(tmp_path / "w"),
                           "--set", "model.hidden=abc"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == "python -m train: error: --set model.hidden: expected int, got 'abc'"
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr
