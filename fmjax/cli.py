"""Command line: speech tokens -> a 24 kHz wav with a converted flow and HiFT (or Griffin-Lim), streaming or offline.

    python -m fmjax.cli token2wav --flow CKPT (--tokens FILE | --utterance ID) [--out OUT.wav] [options]

Inputs:

* ``--flow``: an fmjax flow checkpoint (``fmjax.checkpoint.save_flow_checkpoint``: ``config.json`` + ``params/``)
  or a trainer workdir (``python -m train --config train/configs/token2mel.py ...``: the newest checkpoint's EMA
  params, or the raw params with ``--no-ema``); read by :func:`fmjax.checkpoint.load_flow`.
* ``--hift``: CosyVoice's ``hift.pt`` (or ``.npz`` / ``.safetensors``), converted on load; without it the mel goes
  through Griffin-Lim (for flows trained on the shipped corpus, which has no HiFT).
* tokens: ``--tokens`` (``.npy`` of ids, or a text file of ids separated by spaces, commas or newlines) or
  ``--utterance`` (an utterance id of the corpus).
* prompt (optional): ``--prompt-utterance`` (corpus tokens + mel), ``--prompt-mel`` (a ``[t, 80]`` log-mel ``.npy``,
  with ``--prompt-tokens`` or else tokenised by the corpus tokenizer), or ``--prompt-wav`` (log-mel + corpus
  tokenizer; resampled to 24 kHz).
* speaker: ``--speaker-embedding`` (``.npy`` ``[192]``) or ``--speaker`` (a corpus speaker); by default the speaker
  of ``--prompt-utterance`` or ``--utterance``.

Output: ``--out`` (default ``runs/token2wav/<date-time>/out.wav`` under the current directory), checked before any
work; the audio is written by :func:`fmjax.audio.save_wav`, which never clips silently (peaks above full scale
are soft-limited, with a warning).

Streaming (the default) feeds the tokens ``--chunk`` at a time, as if they arrived from a language model, and prints a
row per arrival: its latency, the samples it emitted and its real-time factor (latency / duration of the emitted
audio). An arrival that emits 0 samples only buffered its tokens: a chunk of the flow is emitted once the
look-ahead tokens after it have arrived (and the vocoder keeps its cross-fade overlap for the next call), so with
short arrivals the first one typically emits nothing and its audio comes with the next. The synthesis runs twice:
the first pass includes compilation, the second is compiled; both real-time factors are printed and the table
shows the compiled pass (``--single-pass`` skips the second). ``--offline`` runs the offline twin.

A MeanFlow student (``python -m train --config train/configs/meanflow.py``; :mod:`fmjax.meanflow`) streams the same
way; its defaults are 2 ``meanflow`` steps on the linear grid without CFG (its guidance is folded into training:
``--cfg`` above 0 is a usage error).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

__all__ = ["main", "build_parser", "load_flow"]


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    return parse


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from fmjax.samplers import ALL_SOLVERS

    ap = argparse.ArgumentParser(prog="python -m fmjax.cli", description="fmjax command line tools")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("token2wav", help="speech tokens -> wav (streaming or offline)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    t.set_defaults(run=_token2wav, parser=t)  # errors print the subcommand's usage
    t.add_argument("--verbose", action="store_true", help="show library warnings (absl, orbax) (default: quiet)")
    g = t.add_argument_group("models")
    g.add_argument("--flow", required=True, help="fmjax flow checkpoint directory or trainer workdir (required)")
    g.add_argument("--no-ema", action="store_true", help="trainer workdir: use the raw params, not the EMA "
                                                         "(default: EMA)")
    g.add_argument("--hift", help="HiFT weights (hift.pt / .npz / .safetensors) (default: Griffin-Lim)")
    g.add_argument("--gl-iters", type=_int_at_least(1), default=32,
                   help="Griffin-Lim iterations per window (default: 32)")
    g = t.add_argument_group("inputs (one token source; the prompt and speaker are optional)")
    g.add_argument("--tokens", help="ids to synthesise: .npy or a text file of integers (this or --utterance is "
                                    "required)")
    g.add_argument("--utterance", help="synthesise the tokens of this corpus utterance id (this or --tokens is "
                                       "required)")
    g.add_argument("--prompt-utterance", help="prompt: tokens and mel of this corpus utterance id (default: none)")
    g.add_argument("--prompt-mel", help="prompt: a [t, m] log-mel .npy (default: none)")
    g.add_argument("--prompt-tokens", help="prompt ids for --prompt-mel (default: the corpus tokenizer)")
    g.add_argument("--prompt-wav", help="prompt: an audio file (log-mel + the corpus tokenizer) (default: none)")
    g.add_argument("--speaker-embedding", help="speaker embedding .npy of shape [spk_embed_dim] "
                                               "(default: the speaker of the prompt or utterance)")
    g.add_argument("--speaker", help="a corpus speaker name (default: the speaker of the prompt or utterance)")
    g.add_argument("--corpus", help="corpus directory for ids, speakers and the tokenizer (default: the shipped one)")
    g = t.add_argument_group("synthesis")
    g.add_argument("--out", help="output .wav path (default: runs/token2wav/<date-time>/out.wav)")
    g.add_argument("--offline", action="store_true", help="offline chunk-masked synthesis instead of streaming "
                                                          "(default: streaming)")
    g.add_argument("--chunk", type=_int_at_least(1), default=25, help="streaming: tokens per arrival (default: 25)")
    g.add_argument("--steps", type=_int_at_least(1),
                   help="ODE steps (default: 10; 2 for a MeanFlow student)")
    g.add_argument("--solver", choices=sorted(ALL_SOLVERS),
                   help="ODE solver (default: euler; meanflow for a MeanFlow student)")
    g.add_argument("--cfg", type=_weight, help="classifier-free guidance weight >= 0 (default: 0.7; 0 for a MeanFlow "
                                               "student, whose guidance is folded into its training)")
    g.add_argument("--window", type=_int_at_least(1),
                   help="K/V window in tokens (default: the whole stream, exact)")
    g.add_argument("--seed", type=int, default=0, help="seed of HiFT's sine noise (default: 0)")
    g.add_argument("--single-pass", action="store_true",
                   help="run once: timings include compilation (default: a second, compiled pass is timed too)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return ap


def _output_path(ap, out) -> pathlib.Path:
    """The checked ``--out`` (default under ``runs/token2wav/<date-time>/``); usage error for a directory, another
    extension or an unwritable place -- before any work."""
    path = pathlib.Path(out) if out else pathlib.Path("runs", "token2wav", time.strftime("%Y%m%d-%H%M%S"), "out.wav")
    if path.is_dir():
        ap.error(f"--out: expected a .wav file path, {str(path)!r} is a directory")
    if path.suffix.lower() not in (".wav", ".flac"):
        ap.error(f"--out: expected a .wav (or .flac) file path, got {str(path)!r}")
    parent = next((q for q in path.absolute().parents if q.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        ap.error(f"--out: cannot write {str(path)!r} ({parent} is not a writable directory)")
    return path


# ------------------------------------------------------------------------------------------------- loading
def load_flow(directory, *, ema: bool = True):
    """``(model, params)`` from an fmjax flow checkpoint or a trainer workdir (:func:`fmjax.checkpoint.load_flow`)."""
    from fmjax.checkpoint import load_flow as _load

    loaded = _load(directory, ema=ema, what="--flow")
    return loaded.model, loaded.params


def _np_load(path: pathlib.Path, name: str, expected: str) -> np.ndarray:
    """``np.load`` of a ``.npy`` (no pickles); any read failure is one ValueError naming the argument and path."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 -- EOFError, ValueError, UnpicklingError, OSError, ...
        raise ValueError(f"{name}: {str(path)!r} is not a readable .npy of {expected} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: {str(path)!r} holds an .npz archive, expected a .npy of {expected}")
    return arr


def _read_ids(path, name: str) -> np.ndarray:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    if path.suffix == ".npy":
        ids = _np_load(path, name, "integer ids")
    else:
        text = path.read_text().replace(",", " ").split()
        try:
            ids = np.array([int(x) for x in text], np.int64)
        except ValueError as e:
            raise ValueError(f"{name}: expected integer ids separated by spaces/commas/newlines ({e})") from None
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected a non-empty 1-D list of integer ids, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    return ids.astype(np.int64)


def _read_array(path, name: str, shape_desc: str, ndim: int) -> np.ndarray:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    arr = _np_load(path, name, f"an array of shape {shape_desc}")
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_desc}, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got {int(arr.size - np.isfinite(arr).sum())} NaN/inf")
    return arr


class _Inputs:
    """Resolves the token / prompt / speaker arguments (the corpus is loaded only when one of them needs it)."""

    def __init__(self, args):
        self.args, self._corpus = args, None

    @property
    def corpus(self):
        if self._corpus is None:
            from fmjax.data.corpus import load_corpus

            self._corpus = load_corpus(self.args.corpus)
        return self._corpus

    def utterance(self, uid: str, name: str):
        for u in (*self.corpus.train, *self.corpus.valid):
            if u.id == uid:
                return u
        raise ValueError(f"{name}: no utterance {uid!r} in the corpus {str(self.corpus.root)!r} "
                         f"(ids look like {self.corpus.train[0].id!r})")

    def tokens(self) -> np.ndarray:
        a = self.args
        if (a.tokens is None) == (a.utterance is None):
            raise ValueError("--tokens / --utterance: give exactly one token source")
        return _read_ids(a.tokens, "--tokens") if a.tokens else self.utterance(a.utterance, "--utterance").tokens

    def prompt(self, mel_dim: int):
        """``(prompt tokens [p] | None, prompt mel [2p, m] | None)``."""
        a = self.args
        given = [x for x in ("prompt_utterance", "prompt_mel", "prompt_wav") if getattr(a, x) is not None]
        if len(given) > 1:
            raise ValueError(f"--{given[0].replace('_', '-')} / --{given[1].replace('_', '-')}: give one prompt")
        if a.prompt_tokens is not None and a.prompt_mel is None:
            raise ValueError("--prompt-tokens: only with --prompt-mel")
        if not given:
            return None, None
        if a.prompt_utterance is not None:
            u = self.utterance(a.prompt_utterance, "--prompt-utterance")
            return u.tokens, u.mel
        if a.prompt_mel is not None:
            mel = _read_array(a.prompt_mel, "--prompt-mel", f"[t, {mel_dim}]", 2)
        else:
            from fmjax.audio import MelConfig, load_wav, log_mel

            config = MelConfig()
            wav, _ = load_wav(a.prompt_wav, config.sample_rate, resample_to_sr=True)
            mel = np.asarray(log_mel(wav, config))
        if mel.shape[1] != mel_dim or not np.isfinite(mel).all():
            raise ValueError(f"--prompt-{'mel' if a.prompt_mel else 'wav'}: expected a finite [t, {mel_dim}] "
                             f"log-mel, got shape {mel.shape}" + ("" if np.isfinite(mel).all() else " with NaN/inf"))
        if a.prompt_tokens is not None:
            return _read_ids(a.prompt_tokens, "--prompt-tokens"), mel
        tokens = np.asarray(self.corpus.tokenizer().encode(mel))
        return tokens, mel[: 2 * len(tokens)]

    def speaker(self, dim: int) -> np.ndarray:
        a = self.args
        if a.speaker_embedding is not None and a.speaker is not None:
            raise ValueError("--speaker-embedding / --speaker: give at most one")
        if a.speaker_embedding is not None:
            emb = _read_array(a.speaker_embedding, "--speaker-embedding", f"[{dim}]", 1)
            if emb.shape != (dim,):
                raise ValueError(f"--speaker-embedding: expected shape [{dim}] (the flow's spk_embed_dim), "
                                 f"got {emb.shape}")
            return emb
        if a.speaker is not None:
            if a.speaker not in self.corpus.speakers:
                raise ValueError(f"--speaker: unknown speaker {a.speaker!r}; the corpus has "
                                 f"{list(self.corpus.speakers)}")
            return self.corpus.spk_embeddings[self.corpus.speakers.index(a.speaker)]
        uid = a.prompt_utterance or a.utterance
        if uid is None:
            raise ValueError("--speaker-embedding / --speaker: needed unless --prompt-utterance or --utterance names "
                             "a corpus utterance (whose speaker is used)")
        return self.utterance(uid, "--prompt-utterance" if a.prompt_utterance else "--utterance").spk


# ------------------------------------------------------------------------------------------------- running
def _token2wav(args, ap) -> int:
    from fmjax.audio import save_wav
    from fmjax.convert.hift import convert_hift
    from fmjax.token2mel_stream import Token2MelStream
    from fmjax.token2wav import GriffinLimVocoder, HiFTVocoder, Token2Wav

    out = _output_path(ap, args.out)
    try:
        inputs = _Inputs(args)
        model, flow_params = load_flow(args.flow, ema=not args.no_ema)
        cfg = model.config
        tokens = inputs.tokens()
        prompt_tokens, prompt_mel = inputs.prompt(cfg.mel_dim)
        embedding = inputs.speaker(cfg.spk_embed_dim)
        if args.hift:
            yaml = pathlib.Path(args.hift).with_name("cosyvoice2.yaml")  # the model directory's own config, if there
            hift_config, hift_params = convert_hift(args.hift, cosyvoice_yaml=yaml if yaml.is_file() else None,
                                                    preset="cosyvoice2")
            vocoder = HiFTVocoder(hift_config)
        else:
            vocoder, hift_params = GriffinLimVocoder(n_iter=args.gl_iters), None
        p = 0 if prompt_tokens is None else len(prompt_tokens)
        c = cfg.chunk_size
        window = args.window or max(c * -(-(p + len(tokens)) // c), c * (cfg.num_left_chunks + 1))
        t2w = Token2Wav(Token2MelStream(model, window_tokens=window, n_steps=args.steps, solver=args.solver,
                                        cfg_weight=_cfg_weight(args, model)), vocoder)
        params = t2w.prepare_params(flow_params, hift_params)
        batch = dict(embedding=embedding[None], prompt_tokens=None if p == 0 else prompt_tokens[None],
                     prompt_mel=None if p == 0 else prompt_mel[None], vocoder_key=jax.random.key(args.seed))
        run = _offline if args.offline else _stream
        passes = [run(t2w, params, tokens, batch, args.chunk, progress=not args.no_progress)]
        if not args.single_pass:
            passes.append(run(t2w, params, tokens, batch, args.chunk, progress=False))
    except (ValueError, TypeError, FileNotFoundError) as e:
        ap.error(" ".join(str(e).split()))
    wav = passes[-1]["wav"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_wav(out, wav, t2w.sample_rate)
    seconds = len(wav) / t2w.sample_rate
    mode = "offline" if args.offline else f"streaming, {args.chunk}-token arrivals"
    vocoder_name = "HiFT" if args.hift else f"Griffin-Lim ({args.gl_iters} iterations)"
    print(f"wrote {out}: {len(wav)} samples = {seconds:.2f} s at {t2w.sample_rate} Hz "
          f"({len(tokens)} tokens, prompt {p}; {mode}; {vocoder_name})")
    if not args.offline:
        print(_chunk_table(passes[-1], args.chunk, len(tokens), t2w.sample_rate, getattr(cfg, "pre_lookahead_len", None)))
    for name, r in zip(("first pass (includes compilation)", "second pass (compiled)"), passes):
        first = f"; first audio after {r['first_audio']:.2f} s" if r.get("first_audio") is not None else ""
        print(f"{name}: {r['total']:.2f} s for {seconds:.2f} s of audio{first}: real-time factor "
              f"{r['total'] / seconds:.3f}")
    return 0


def _cfg_weight(args, model):
    """``--cfg``, checked against the flow: a MeanFlow student has its guidance folded in (``--cfg`` must be 0), and
    only a student takes ``--solver meanflow``."""
    from fmjax.meanflow import is_student

    if is_student(model) and args.cfg:
        raise ValueError(f"--cfg: the flow is a MeanFlow student with classifier-free guidance folded into its "
                         f"training; it samples without CFG (omit --cfg or pass 0), got {args.cfg}")
    if args.solver == "meanflow" and not is_student(model):
        raise ValueError("--solver: meanflow steps a MeanFlow student's average velocity; this flow is a plain flow "
                         "(use euler, midpoint, heun or rk4)")
    return args.cfg


def _offline(t2w, params, tokens, batch, chunk, *, progress) -> dict:
    t0 = time.perf_counter()
    wav, _ = t2w.offline(params, tokens[None], batch["embedding"], prompt_tokens=batch["prompt_tokens"],
                         prompt_mel=batch["prompt_mel"], vocoder_key=batch["vocoder_key"])
    wav = np.asarray(wav[0])
    return {"wav": wav, "total": time.perf_counter() - t0}


def _stream(t2w, params, tokens, batch, chunk, *, progress) -> dict:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    state = t2w.init(params, batch["embedding"], batch["prompt_tokens"], batch["prompt_mel"],
                     vocoder_key=batch["vocoder_key"])
    init_s = time.perf_counter() - t0
    pieces, latency, first_audio = [], [], None
    bar = tqdm(total=len(tokens), unit="tok", desc="token2wav", disable=not progress, file=sys.stderr)
    starts = list(range(0, len(tokens), chunk))
    for j, s in enumerate(starts):
        piece = tokens[None, s : s + chunk]
        t1 = time.perf_counter()
        if j == len(starts) - 1:
            state, out = t2w.finalize(params, state, piece)
        else:
            state, out = t2w.step(params, state, piece)
        latency.append(time.perf_counter() - t1)
        pieces.append(np.asarray(out.wav[0]))
        if first_audio is None and len(out.wav[0]):
            first_audio = time.perf_counter() - t0
        bar.update(piece.shape[1])
        bar.set_postfix(latency=f"{latency[-1]:.3f}s", samples=len(out.wav[0]))
    bar.close()
    return {"wav": np.concatenate(pieces), "total": time.perf_counter() - t0, "init": init_s, "latency": latency,
            "samples": [len(p) for p in pieces], "starts": starts, "first_audio": first_audio}


def _chunk_table(r: dict, chunk: int, n_tokens: int, sample_rate: int, lookahead: int | None) -> str:
    """One row per arrival (latency, samples emitted, real-time factor = latency / emitted duration) and a note on
    arrivals that emit nothing."""
    rtf = [lat * sample_rate / n if n else None for lat, n in zip(r["latency"], r["samples"])]
    working = [x for x in rtf if x is not None]
    lines = [f"{'chunk':>5} {'tokens':>6} {'latency_s':>9} {'samples':>7} {'rtf':>6}"]
    lines += [f"{j:>5} {min(chunk, n_tokens - s):>6} {lat:>9.3f} {n:>7} {'-' if x is None else f'{x:.2f}':>6}"
              for j, (s, lat, n, x) in enumerate(zip(r["starts"], r["latency"], r["samples"], rtf))]
    if any(n == 0 for n in r["samples"]):
        ahead = f"the {lookahead} look-ahead token(s)" if lookahead else "its look-ahead tokens"
        lines.append(f"(samples 0, rtf -: the arrival only buffered its tokens -- a chunk is emitted once {ahead} "
                     "after it have arrived and the vocoder keeps its cross-fade overlap; its audio comes with a "
                     "later arrival)")
    lines.append(f"init {r['init']:.2f} s; chunk latency median {np.median(r['latency']):.3f} s, max "
                 f"{max(r['latency']):.3f} s; arrivals that emitted audio faster than real time: "
                 f"{sum(x < 1 for x in working)}/{len(working)}")
    return "\n".join(lines)


def _quiet(verbose: bool) -> None:
    """absl/orbax/jax warnings hidden unless ``verbose`` (their WARNING lines are not the user's concern)."""
    if verbose:
        return
    import logging
    import warnings

    for name in ("absl", "orbax", "jax._src", "tensorstore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(orbax|absl|jax|flax)(\..*)?")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    try:
        return args.run(args, args.parser)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
