"""Command line: speech tokens -> a 24 kHz wav with a converted flow and HiFT (or Griffin-Lim), streaming or offline.

    python -m fmjax.cli token2wav --flow CKPT (--tokens FILE | --utterance ID) --out OUT.wav [options]

Inputs:

* ``--flow``: an fmjax flow checkpoint (``fmjax.convert.flow.save_flow_checkpoint``: ``config.json`` + ``params/``)
  or a trainer workdir (``python -m train --config train/configs/token2mel.py ...``: its ``config.json`` and the
  newest checkpoint's EMA params, or the raw params with ``--no-ema``).
* ``--hift``: CosyVoice's ``hift.pt`` (or ``.npz`` / ``.safetensors``), converted on load; without it the mel goes
  through Griffin-Lim (for flows trained on the shipped corpus, which has no HiFT).
* tokens: ``--tokens`` (``.npy`` of ids, or a text file of ids separated by spaces, commas or newlines) or
  ``--utterance`` (an utterance id of the corpus).
* prompt (optional): ``--prompt-utterance`` (corpus tokens + mel), ``--prompt-mel`` (a ``[t, 80]`` log-mel ``.npy``,
  with ``--prompt-tokens`` or else tokenised by the corpus tokenizer), or ``--prompt-wav`` (log-mel + corpus
  tokenizer; resampled to 24 kHz).
* speaker: ``--speaker-embedding`` (``.npy`` ``[192]``) or ``--speaker`` (a corpus speaker); by default the speaker
  of ``--prompt-utterance`` or ``--utterance``.

Streaming (the default) feeds the tokens ``--chunk`` at a time, as if they arrived from a language model, and prints
per-chunk latency and real-time factor (a call's compute time / the duration of the audio it emitted; a call that
emits nothing only buffered its tokens); ``--offline`` runs the offline twin. Timings include compilation unless
``--warmup`` runs the whole synthesis once first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

__all__ = ["main", "build_parser", "load_flow"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fmjax.cli", description="fmjax command line tools")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("token2wav", help="speech tokens -> wav (streaming or offline)",
                       description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    t.set_defaults(run=_token2wav, parser=t)  # errors print the subcommand's usage
    g = t.add_argument_group("models")
    g.add_argument("--flow", required=True, help="fmjax flow checkpoint directory or trainer workdir")
    g.add_argument("--no-ema", action="store_true", help="trainer workdir: use the raw params, not the EMA")
    g.add_argument("--hift", help="HiFT weights (hift.pt / .npz / .safetensors); default: Griffin-Lim")
    g.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations per window (default 32)")
    g = t.add_argument_group("inputs")
    g.add_argument("--tokens", help="ids to synthesise: .npy or a text file of integers")
    g.add_argument("--utterance", help="synthesise the tokens of this corpus utterance id")
    g.add_argument("--prompt-utterance", help="prompt: tokens and mel of this corpus utterance id")
    g.add_argument("--prompt-mel", help="prompt: a [t, m] log-mel .npy")
    g.add_argument("--prompt-tokens", help="prompt ids for --prompt-mel (default: the corpus tokenizer)")
    g.add_argument("--prompt-wav", help="prompt: an audio file (log-mel + the corpus tokenizer)")
    g.add_argument("--speaker-embedding", help="speaker embedding .npy of shape [spk_embed_dim]")
    g.add_argument("--speaker", help="a corpus speaker name")
    g.add_argument("--corpus", help="corpus directory for ids, speakers and the tokenizer (default: the shipped one)")
    g = t.add_argument_group("synthesis")
    g.add_argument("--out", required=True, help="output wav path")
    g.add_argument("--offline", action="store_true", help="offline chunk-masked synthesis instead of streaming")
    g.add_argument("--chunk", type=int, default=25, help="streaming: tokens per arrival (default 25)")
    g.add_argument("--steps", type=int, default=10, help="ODE steps (default 10)")
    g.add_argument("--solver", default="euler", help="euler, midpoint, heun or rk4 (default euler)")
    g.add_argument("--cfg", type=float, default=0.7, help="classifier-free guidance weight (default 0.7)")
    g.add_argument("--window", type=int, help="K/V window in tokens (default: the whole stream, exact)")
    g.add_argument("--seed", type=int, default=0, help="seed of HiFT's sine noise (default 0)")
    g.add_argument("--warmup", action="store_true", help="run once untimed first (timings without compilation)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


# ------------------------------------------------------------------------------------------------- loading
def load_flow(directory, *, ema: bool = True):
    """``(model, params)`` from an fmjax flow checkpoint or a trainer workdir (:func:`fmjax.checkpoint.load_flow`)."""
    from fmjax.checkpoint import load_flow as _load

    loaded = _load(directory, ema=ema, what="--flow")
    return loaded.model, loaded.params


def _read_ids(path, name: str) -> np.ndarray:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    if path.suffix == ".npy":
        ids = np.load(path)
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
    arr = np.load(path)
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_desc}, got {arr.shape}")
    return np.asarray(arr, np.float32)


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

    for name in ("chunk", "steps", "gl_iters"):
        if getattr(args, name) < (0 if name == "gl_iters" else 1):
            ap.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    try:
        inputs = _Inputs(args)
        model, flow_params = load_flow(args.flow, ema=not args.no_ema)
        cfg = model.config
        tokens = inputs.tokens()
        prompt_tokens, prompt_mel = inputs.prompt(cfg.mel_dim)
        embedding = inputs.speaker(cfg.spk_embed_dim)
        if args.hift:
            hift_config, hift_params = convert_hift(args.hift)
            vocoder = HiFTVocoder(hift_config)
        else:
            vocoder, hift_params = GriffinLimVocoder(n_iter=args.gl_iters), None
        p = 0 if prompt_tokens is None else len(prompt_tokens)
        c = cfg.chunk_size
        window = args.window or max(c * -(-(p + len(tokens)) // c), c * (cfg.num_left_chunks + 1))
        t2w = Token2Wav(Token2MelStream(model, window_tokens=window, n_steps=args.steps, solver=args.solver,
                                        cfg_weight=args.cfg), vocoder)
        params = t2w.prepare_params(flow_params, hift_params)
        batch = dict(embedding=embedding[None], prompt_tokens=None if p == 0 else prompt_tokens[None],
                     prompt_mel=None if p == 0 else prompt_mel[None], vocoder_key=jax.random.key(args.seed))
        run = _offline if args.offline else _stream
        if args.warmup:
            run(t2w, params, tokens, batch, args.chunk, progress=False)
        wav, report = run(t2w, params, tokens, batch, args.chunk, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError) as e:
        ap.error(str(e))
    save_wav(args.out, wav, t2w.sample_rate)
    seconds = len(wav) / t2w.sample_rate
    mode = "offline" if args.offline else f"streaming, {args.chunk}-token arrivals"
    vocoder_name = "HiFT" if args.hift else f"Griffin-Lim ({args.gl_iters} iterations)"
    print(f"wrote {args.out}: {len(wav)} samples = {seconds:.2f} s at {t2w.sample_rate} Hz "
          f"({len(tokens)} tokens, prompt {p}; {mode}; {vocoder_name})")
    print(report + ("" if args.warmup else " (compilation included; --warmup excludes it)"))
    return 0


def _offline(t2w, params, tokens, batch, chunk, *, progress):
    t0 = time.perf_counter()
    wav, _ = t2w.offline(params, tokens[None], batch["embedding"], prompt_tokens=batch["prompt_tokens"],
                         prompt_mel=batch["prompt_mel"], vocoder_key=batch["vocoder_key"])
    elapsed = time.perf_counter() - t0
    seconds = len(wav[0]) / t2w.sample_rate
    return wav[0], f"synthesis {elapsed:.2f} s for {seconds:.2f} s of audio: real-time factor {elapsed / seconds:.3f}"


def _stream(t2w, params, tokens, batch, chunk, *, progress):
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
        pieces.append(out.wav[0])
        if first_audio is None and len(out.wav[0]):
            first_audio = time.perf_counter() - t0
        bar.update(piece.shape[1])
        bar.set_postfix(latency=f"{latency[-1]:.3f}s", samples=len(out.wav[0]))
    bar.close()
    total = time.perf_counter() - t0
    wav = np.concatenate(pieces)
    seconds = len(wav) / t2w.sample_rate
    # A call's real-time factor: its latency over the duration of the audio it emitted (a call that emits nothing
    # only buffered its tokens, e.g. a chunk waiting for its look-ahead tokens).
    rtf = [lat * t2w.sample_rate / len(p) if len(p) else None for lat, p in zip(latency, pieces)]
    working = [r for r in rtf if r is not None]
    lines = [f"{'chunk':>5} {'tokens':>6} {'latency_s':>9} {'samples':>7} {'rtf':>6}"]
    lines += [f"{j:>5} {min(chunk, len(tokens) - s):>6} {lat:>9.3f} {len(p):>7} {'-' if r is None else f'{r:.2f}':>6}"
              for j, (s, lat, p, r) in enumerate(zip(starts, latency, pieces, rtf))]
    lines.append(f"init {init_s:.2f} s; first audio after {first_audio if first_audio is not None else total:.2f} s; "
                 f"chunk latency median {np.median(latency):.3f} s, max {max(latency):.3f} s; calls that emitted audio "
                 f"faster than real time: {sum(r < 1 for r in working)}/{len(working)}; total {total:.2f} s for "
                 f"{seconds:.2f} s of audio: real-time factor {total / seconds:.3f}")
    return wav, "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
