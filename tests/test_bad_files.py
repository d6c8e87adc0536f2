"""Bad-file matrix of the loaders: every read failure is one error naming the path (or key) and what was expected,
never a raw BadZipFile/EOFError/SafetensorError/UnpicklingError. One row per case: state dicts and converters,
corpora, flow checkpoints and trainer workdirs."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import shutil

import numpy as np
import pytest

from fmjax.audio import MelConfig
from fmjax.checkpoint import (CheckpointError, IncompatibleCheckpointError, MissingCheckpointError, load_flow,
                              load_flow_checkpoint, load_teacher, restore_params, save_flow_checkpoint)
from fmjax.convert.common import StateDictError, load_state_dict
from fmjax.convert.hift import convert_hift
from fmjax.data.corpus import load_corpus, save_corpus


# ---------------------------------------------------------------------------------------------- state dicts
def _npz(d):
    np.savez(d / "ok.npz", w=np.ones((2, 3), np.float32))
    return d / "ok.npz"


def _write(name, make):
    def build(d: pathlib.Path) -> pathlib.Path:
        path = d / name
        make(path, d)
        return path

    return build


def _nan_npz(path, d):
    w = np.ones((2, 3), np.float32)
    w[1, 2] = np.inf
    np.savez(path, **{"decoder.w": w})


def _torch_save(obj):
    def make(path, d):
        torch = pytest.importorskip("torch")
        torch.save(obj() if callable(obj) else obj, path)

    return make


def _truncated_torch(path, d):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(8)}, d / "full.pt")
    path.write_bytes((d / "full.pt").read_bytes()[:64])


class _Opaque:  # a pickled object a weights-only load must refuse
    pass


STATE_DICT_ROWS = [
    ("npz-truncated", _write("t.npz", lambda p, d: p.write_bytes(_npz(d).read_bytes()[:40])), StateDictError,
     r"t\.npz' is not readable as an \.npz archive of arrays \(BadZipFile"),
    ("npz-empty", _write("e.npz", lambda p, d: p.write_bytes(b"")), StateDictError, r"e\.npz' is not readable .*EOFError"),
    ("npz-objects", _write("o.npz", lambda p, d: np.savez(p, w=np.array([{}], dtype=object))), StateDictError,
     r"o\.npz' is not readable"),
    ("npz-nan", _write("n.npz", _nan_npz), StateDictError, r"tensor 'decoder\.w' in '.*n\.npz' has 1 NaN/inf"),
    ("safetensors-junk", _write("j.safetensors", lambda p, d: p.write_bytes(b"not a safetensors file")),
     StateDictError, r"j\.safetensors' is not readable as a safetensors file \(SafetensorError"),
    ("torch-truncated", _write("t.pt", _truncated_torch), StateDictError, r"t\.pt' is not readable as a PyTorch state"),
    ("torch-pickle", _write("p.pt", lambda p, d: p.write_bytes(pickle.dumps({"w": _Opaque()}))), StateDictError,
     r"p\.pt' .*holds Python objects other than tensors"),
    ("torch-not-a-dict", _write("x.pt", _torch_save(lambda: __import__("torch").ones(3))), StateDictError,
     r"x\.pt' holds a Tensor, expected a PyTorch state dict"),
    ("suffix", _write("w.h5", lambda p, d: p.write_bytes(b"x")), ValueError, r"^source: expected a \.pt"),
    ("missing", lambda d: d / "absent.npz", FileNotFoundError, r"^source: state dict file .*absent\.npz' does not exist"),
    ("directory", _write("dir.npz", lambda p, d: p.mkdir()), ValueError, r"^source: expected a state dict file"),
    ("not-a-path", lambda d: 3.5, TypeError, r"^source: expected a path or a mapping"),
]


@pytest.mark.parametrize("build, error, pattern", [r[1:] for r in STATE_DICT_ROWS], ids=[r[0] for r in STATE_DICT_ROWS])
def test_state_dict_file_errors(tmp_path, build, error, pattern):
    source = build(tmp_path)
    with pytest.raises(error) as info:
        load_state_dict(source)
    assert isinstance(info.value, error) and re.search(pattern, str(info.value)), str(info.value)
    assert "weights_only=False" not in str(info.value)  # never advise an unsafe load


def test_weight_converters_reject_nan_naming_key_and_file(tmp_path):
    w = {"conv_pre.weight": np.ones((4, 80, 7), np.float32)}
    w["conv_pre.weight"][0, 0, 0] = np.nan
    np.savez(tmp_path / "hift.npz", **w)
    with pytest.raises(StateDictError, match=r"tensor 'conv_pre\.weight' in '.*hift\.npz' has 1 NaN/inf"):
        convert_hift(tmp_path / "hift.npz", preset="cosyvoice2")
    with pytest.raises(StateDictError, match=r"tensor 'conv_pre\.weight' in the given mapping"):
        load_state_dict(w)


# --------------------------------------------------------------------------------------------------- corpora
def _corpus(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    save_corpus(root, config=MelConfig(), vocab_size=8, speakers={"a": np.zeros(192, np.float32)},
                records=[{"id": f"u{i}", "speaker": "a", "text": "", "split": s} for i, s in enumerate(("train", "valid"))],
                mels=[rng.normal(size=(4, 80)), rng.normal(size=(6, 80))], tokens=[np.arange(2), np.arange(3)])
    return root


def _break(fn):
    def build(root):
        fn(_corpus(root))
        return root

    return build


def _edit_index(change):
    def fn(root):
        index = json.loads((root / "index.json").read_text())
        change(index)
        (root / "index.json").write_text(json.dumps(index))

    return fn


CORPUS_ROWS = [
    ("missing-dir", lambda root: root / "nowhere", FileNotFoundError, r"^path: corpus directory .* does not exist"),
    ("index-not-json", _break(lambda r: (r / "index.json").write_text("{oops")), ValueError,
     r"^path: '.*index\.json' is not a readable JSON corpus index"),
    ("index-a-list", _break(lambda r: (r / "index.json").write_text("[]")), ValueError,
     r"^path: '.*index\.json' is not a corpus index \(a JSON list"),
    ("index-binary", _break(lambda r: (r / "index.json").write_bytes(b"\xff\xfe\x00")), ValueError,
     r"^path: '.*index\.json' is not a readable JSON"),
    ("features-truncated", _break(lambda r: (r / "features.npz").write_bytes((r / "features.npz").read_bytes()[:30])),
     ValueError, r"^path: corpus file '.*features\.npz' is not a readable \.npz .*BadZipFile"),
    ("features-missing-array", _break(lambda r: np.savez(r / "features.npz", mel=np.zeros((10, 80)))), ValueError,
     r"^path: corpus file '.*features\.npz' lacks the arrays \['tokens'\]"),
    ("speakers-empty", _break(lambda r: (r / "speakers.npz").write_bytes(b"")), ValueError,
     r"^path: corpus file '.*speakers\.npz' is not a readable \.npz"),
    ("features-absent", _break(lambda r: (r / "features.npz").unlink()), FileNotFoundError,
     r"^path: corpus file '.*features\.npz' does not exist"),
    ("record-malformed", _break(_edit_index(lambda ix: ix["utterances"][0].pop("frames"))), ValueError,
     r"^path: '.*index\.json': expected utterance records with integer 'frames'"),
    ("record-frames-text", _break(_edit_index(lambda ix: ix["utterances"][1].update(frames="six"))), ValueError,
     r"^path: '.*index\.json': expected utterance records"),
]


@pytest.mark.parametrize("build, error, pattern", [r[1:] for r in CORPUS_ROWS], ids=[r[0] for r in CORPUS_ROWS])
def test_corpus_file_errors(tmp_path, build, error, pattern):
    root = build(tmp_path / "corpus")
    with pytest.raises(error) as info:
        load_corpus(root)
    assert re.search(pattern, str(info.value)), str(info.value)


# ----------------------------------------------------------------------------------------- flow checkpoints
@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    from tests.models.test_flow import tiny_flow

    model, params = tiny_flow()
    root = tmp_path_factory.mktemp("flows")
    save_flow_checkpoint(root / "ok", model.config, params)
    return root


def _copy(flow_dir, tmp_path, change):
    target = tmp_path / "flow"
    shutil.copytree(flow_dir / "ok", target)
    change(target)
    return target


def _other_size(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg["estimator"]["channels"] = 24
    (path / "config.json").write_text(json.dumps(cfg))


def _truncate_arrays(path):
    files = [f for f in (path / "params").rglob("*") if f.is_file() and f.parent.name == "d"]
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


FLOW_ROWS = [
    ("empty-dir", lambda p: shutil.rmtree(p / "params"), FileNotFoundError,
     r"^directory: '.*' is not an fmjax flow checkpoint \(expected config\.json and params/\)"),
    ("config-not-json", lambda p: (p / "config.json").write_text("{x"), CheckpointError,
     r"^directory: '.*config\.json' is not readable JSON"),
    ("config-unknown-class", lambda p: (p / "config.json").write_text('{"class": "Nope"}'), CheckpointError,
     r"^directory: '.*config\.json' is not a flow config \(config: unknown class 'Nope'"),
    ("config-unknown-field", lambda p: (p / "config.json").write_text(json.dumps(
        {**json.loads((p / "config.json").read_text()), "bogus": 1})), CheckpointError, r"unknown fields \['bogus'\]"),
    ("params-of-another-size", _other_size, IncompatibleCheckpointError,
     r"^directory: the params in '.*' do not fit its config\.json:\n  mis-shaped leaves \(\d+\): params/decoder/"),
    ("params-truncated", _truncate_arrays, CheckpointError, r"^directory: .*(cannot be read|not a readable orbax tree)"),
]


@pytest.mark.parametrize("change, error, pattern", [r[1:] for r in FLOW_ROWS], ids=[r[0] for r in FLOW_ROWS])
def test_flow_checkpoint_errors(flow_dir, tmp_path, change, error, pattern):
    path = _copy(flow_dir, tmp_path, change)
    with pytest.raises(error) as info:
        load_flow_checkpoint(path)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_flow_loader_and_workdir_errors(flow_dir, tmp_path):
    config, params = load_flow_checkpoint(flow_dir / "ok")
    loaded = load_flow(flow_dir / "ok", what="--flow")
    assert loaded.kind == "flow_checkpoint" and loaded.model.config == config and loaded.step is None
    with pytest.raises(FileNotFoundError, match=r"^--flow: '.*' is neither an fmjax flow checkpoint"):
        load_flow(tmp_path, what="--flow")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(MissingCheckpointError, match=r"^--flow: .* has no checkpoint"):
        load_flow(tmp_path / "run", what="--flow")
    with pytest.raises(MissingCheckpointError, match=r"^reflow\.teacher: .* does not exist"):
        load_teacher(tmp_path / "absent", what="reflow.teacher")
    with pytest.raises(MissingCheckpointError, match=r"^train\.init_from: .* does not exist"):
        restore_params(tmp_path / "absent", {}, None)
    with pytest.raises(IncompatibleCheckpointError, match=r"^params: do not fit the config"):
        save_flow_checkpoint(tmp_path / "bad", config, {"params": {}})
    assert not (tmp_path / "bad").exists()  # refused before writing
