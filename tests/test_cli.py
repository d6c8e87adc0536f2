"""``python -m fmjax.cli token2wav`` on tiny random checkpoints it writes (an fmjax flow checkpoint, a trainer workdir,
a torch-named HiFT state dict): offline with HiFT, streaming with Griffin-Lim; the wav's rate and exact length;
clear messages for bad arguments."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import optax
import pytest
import soundfile as sf

from fmjax.cli import main
from fmjax.convert.flow import save_flow_checkpoint
from fmjax.convert.hift import convert_hift
from fmjax.data.corpus import load_corpus
from fmjax.models.flow import CosyVoice2Flow, flow_param_shapes
from fmjax.models.hift import HiFTConfig, init_hift
from tests.models.test_flow import tiny_config

UP = 480
WINDOW = ["--window", "128"]  # one window for every run: they share the compiled flow step


def _random_flow():
    """A tiny flow over the corpus's vocabulary (256) and speaker width (192), random weights."""
    config = dataclasses.replace(tiny_config(chunk=2), vocab_size=256, spk_embed_dim=192)
    rng = np.random.default_rng(0)

    def draw(path, s):
        x = rng.standard_normal(s.shape).astype(np.float32)
        return x / np.sqrt(np.prod(s.shape[:-1])) if "kernel" in jax.tree_util.keystr(path) else 0.1 * x

    return config, jax.tree_util.tree_map_with_path(draw, flow_param_shapes(CosyVoice2Flow(config)))


def _torch_state_dict(params) -> dict:
    """Flax HiFT params -> torch ``HiFTGenerator`` names and layouts (weight norm already folded)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        *mod, kind = [k.key for k in path]
        base = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in mod)
        leaf = np.asarray(leaf)
        if kind == "kernel" and leaf.ndim == 2:
            out[f"{base}.weight"] = leaf.T  # Linear (out, in)
        elif kind == "kernel":
            out[f"{base}.weight"] = leaf.transpose(1, 2, 0) if base.startswith("ups.") else leaf.transpose(2, 1, 0)
        else:
            out[f"{base}.{kind}"] = leaf
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config, params = _random_flow()
    save_flow_checkpoint(root / "flow", config, params)
    # A trainer workdir in the trainer's own format (resolved config.json + an orbax checkpoint of the state).
    from train.checkpoint import Checkpointer
    from train.config import config_to_dict, write_config
    from train.configs.token2mel import get_config
    from train.state import make_state

    run = get_config("tiny")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, flow=config))
    write_config(run, root / "workdir" / "config.json")
    ckpt = Checkpointer(root / "workdir" / "checkpoints", async_save=False)
    ckpt.save(make_state(params, optax.sgd(1e-3)), position=0, config=config_to_dict(run))
    ckpt.close()
    # A tiny HiFT (3 dilations per resblock, as the converter infers them) saved under torch names.
    hcfg = HiFTConfig(base_channels=16, f0_channels=8, f0_num_convs=2, resblock_kernel_sizes=(3,),
                      resblock_dilations=((1, 3, 5),), source_resblock_kernel_sizes=(3, 3, 3))
    hparams = init_hift(hcfg, seed=0)
    np.savez(root / "hift.npz", **_torch_state_dict(hparams))
    got_cfg, got = convert_hift(root / "hift.npz", preset="cosyvoice2")  # the file is what the CLI will read: check the round trip
    assert got_cfg == hcfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, hparams)
    return root


def _check_wav(path, tokens: int):
    info = sf.info(str(path))
    assert info.samplerate == 24000, f"{path}: sample rate {info.samplerate}, expected 24000"
    assert info.frames == 2 * tokens * UP, f"{path}: {info.frames} samples, expected 2·{tokens}·480"


def test_cli_offline_hift_corpus_utterance_prompt_wav(files, capsys):
    """Offline, HiFT weights, tokens of a corpus utterance, a prompt wav tokenised by the corpus tokenizer."""
    corpus = load_corpus()
    out = files / "offline.wav"
    assert main(["token2wav", "--flow", str(files / "flow"), "--hift", str(files / "hift.npz"), "--utterance",
                 "us_m5/015", "--prompt-wav", str(corpus.valid[5].wav), "--speaker", corpus.speakers[1],
                 "--offline", "--steps", "2", "--out", str(out), *WINDOW]) == 0
    n = next(u for u in corpus.valid if u.id == "us_m5/015").tokens.size  # 54 on the shipped corpus
    _check_wav(out, n)
    text = capsys.readouterr().out
    assert f"{n} tokens, prompt" in text and "offline; HiFT" in text and "real-time factor" in text


def test_cli_streaming_griffin_lim_trainer_workdir(files, capsys):
    """Streaming, Griffin-Lim, a trainer workdir, ids from a text file, a prompt mel with its ids, an embedding."""
    utt = load_corpus().valid[1]
    (files / "ids.txt").write_text(", ".join(map(str, utt.tokens[:33])) + "\n")
    np.save(files / "spk.npy", utt.spk)
    np.save(files / "prompt_mel.npy", utt.mel[:14])
    (files / "prompt_ids.txt").write_text(" ".join(map(str, utt.tokens[:7])))
    out = files / "stream.wav"
    assert main(["token2wav", "--flow", str(files / "workdir"), "--tokens", str(files / "ids.txt"), "--prompt-mel",
                 str(files / "prompt_mel.npy"), "--prompt-tokens", str(files / "prompt_ids.txt"),
                 "--speaker-embedding", str(files / "spk.npy"), "--steps", "2", "--gl-iters", "2", "--chunk", "10",
                 "--no-progress", "--out", str(out), *WINDOW]) == 0
    _check_wav(out, 33)
    text = capsys.readouterr().out
    assert "33 tokens, prompt 7; streaming, 10-token arrivals; Griffin-Lim" in text
    rows = re.findall(r"^\s+\d+\s+(10|3)\s+[\d.]+\s+(\d+)\s+(?:[\d.]+|-)$", text, re.M)  # a row per arrival
    assert [r[0] for r in rows] == ["10", "10", "10", "3"]
    assert sum(int(r[1]) for r in rows) == 2 * 33 * UP
    assert "faster than real time" in text
    assert "first pass (includes compilation):" in text and "second pass (compiled):" in text  # both RTFs
    assert text.count("real-time factor") == 2


def test_cli_default_output_is_under_a_run_folder(files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["token2wav", "--flow", str(files / "flow"), "--utterance", "us_m5/015", "--offline", "--steps",
                 "1", "--gl-iters", "1", "--single-pass", *WINDOW]) == 0
    (wav,) = tmp_path.glob("runs/token2wav/*/out.wav")
    _check_wav(wav, next(u for u in load_corpus().valid if u.id == "us_m5/015").tokens.size)
    text = capsys.readouterr().out
    assert f"wrote {wav.relative_to(tmp_path)}" in text and "second pass" not in text


def test_chunk_table_explains_buffering():
    from fmjax.cli import _chunk_table

    r = {"latency": [0.2, 0.1, 0.05], "samples": [0, 9600, 4800], "starts": [0, 10, 20], "init": 0.01}
    table = _chunk_table(r, 10, 25, 24000, 3)
    rows = table.splitlines()
    assert rows[1].split() == ["0", "10", "0.200", "0", "-"]  # latency 0.2 s, nothing emitted: buffered
    assert rows[2].split() == ["1", "10", "0.100", "9600", "0.25"]  # 0.1 s for 0.4 s of audio
    assert "the arrival only buffered its tokens" in table and "the 3 look-ahead token(s)" in table
    assert "arrivals that emitted audio faster than real time: 2/2" in table


@pytest.mark.parametrize("args, message", [
    ([], r"--tokens / --utterance: give exactly one token source"),
    (["--tokens", "missing.txt"], r"--tokens: no such file"),
    (["--tokens", "{bad}"], r"--tokens: expected integer ids"),
    (["--utterance", "nobody/000"], r"--utterance: no utterance 'nobody/000' in the corpus"),
    (["--utterance", "us_m5/015", "--speaker", "nobody"], r"--speaker: unknown speaker 'nobody'"),
    (["--utterance", "us_m5/015", "--speaker-embedding", "{spk12}"],
     r"--speaker-embedding: expected shape \[192\] \(the flow's spk_embed_dim\), got \(12,\)"),
    (["--utterance", "us_m5/015", "--prompt-utterance", "us_f2/000", "--prompt-wav", "x.wav"],
     r"--prompt-utterance / --prompt-wav: give one prompt"),
    (["--tokens", "{ids300}", "--prompt-utterance", "us_f2/000", "--offline"],  # speaker: the prompt's
     r"tokens: 1 id\(s\) outside the vocabulary \[0, 256\)"),
    (["--utterance", "us_m5/015", "--chunk", "0"], r"argument --chunk: expected an int >= 1, got 0"),
    (["--utterance", "us_m5/015", "--flow", "{root}"], r"--flow: .* is neither an fmjax flow checkpoint"),
    (["--utterance", "us_m5/015", "--cfg", "nan"], r"argument --cfg: expected a finite number >= 0, got 'nan'"),
    (["--utterance", "us_m5/015", "--cfg", "-1"], r"argument --cfg: expected a finite number >= 0, got '-1'"),
    (["--utterance", "us_m5/015", "--steps", "two"], r"argument --steps: expected an int >= 1, got 'two'"),
    (["--utterance", "us_m5/015", "--solver", "rk5"], r"argument --solver: invalid choice: 'rk5'"),
    (["--utterance", "us_m5/015", "--out", "{root}"], r"--out: expected a .wav file path, .* is a directory"),
    (["--utterance", "us_m5/015", "--out", "{root}/x.txt"], r"--out: expected a .wav \(or .flac\) file path"),
    (["--utterance", "us_m5/015", "--out", "{bad}/x.wav"], r"--out: cannot write"),  # a file as the parent
    (["--tokens", "{npz}"], r"--tokens: .* is not a readable .npy of integer ids"),
    (["--utterance", "us_m5/015", "--speaker-embedding", "{spknan}"],
     r"--speaker-embedding: expected finite values, got 1 NaN/inf"),
    (["--utterance", "us_m5/015", "--flow", "{emptyflow}"], r"--flow: .*config.json.* is not readable JSON"),
])
def test_cli_bad_arguments(files, capsys, args, message):
    (files / "bad.txt").write_text("1 2 x 4")
    (files / "ids300.txt").write_text("1 2 300 4")
    np.save(files / "spk12.npy", np.zeros(12, np.float32))
    (files / "ids.npy").write_bytes(b"\x93NUMPY truncated")
    spk = np.zeros(192, np.float32)
    spk[3] = np.nan
    np.save(files / "spknan.npy", spk)
    (files / "emptyflow" / "params").mkdir(parents=True, exist_ok=True)
    (files / "emptyflow" / "config.json").write_text("{not json")
    subs = {"{bad}": str(files / "bad.txt"), "{ids300}": str(files / "ids300.txt"), "{root}": str(files),
            "{spk12}": str(files / "spk12.npy"), "{npz}": str(files / "ids.npy"), "{spknan}": str(files / "spknan.npy"),
            "{emptyflow}": str(files / "emptyflow")}
    args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
    flow = [] if "--flow" in args else ["--flow", str(files / "flow")]
    with pytest.raises(SystemExit) as exit_info:
        main(["token2wav", *flow, "--out", str(files / "never.wav"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0
    assert err.strip().splitlines()[-1].startswith("python -m fmjax.cli token2wav: error: ")  # one line, argparse style
    assert not (files / "never.wav").exists()
