"""Exported streaming steps: the compiled token2mel and HiFT streaming steps as ``jax.export`` artifacts that a server
runs without fmjax's model code.

    from fmjax.export import export_token2mel_stream, export_hift_stream        # needs the models (exporting side)
    export_token2mel_stream(stream, flow_params, batch=4, path="t2m_artifact")
    export_hift_stream(HiFTConfig(), hift_params, batch=4, window_frames=50, path="hift_artifact")

    from fmjax.export import load_token2mel_stream, load_hift_stream            # jax + numpy only (serving side)
    t2m = load_token2mel_stream("t2m_artifact")
    state = t2m.init(embedding)                                  # [b, spk_embed_dim]
    state, mel, frames = t2m.step(state, tokens, lookahead)      # [b, C], [b, L] -> [b, F, m], [b]

**What an artifact is** (a directory; the layout is documented in ``docs/export.md``): ``manifest.json`` (format,
jax version, platform, every input and output with its shape and dtype, the configuration baked in), one
serialized ``jax.export.Exported`` per function (``*.jaxexport``: StableHLO plus its calling convention),
``params.npz`` (the weights, flattened in a fixed order: they are *inputs* of the exported functions, so weights of
the same shapes can be swapped without re-exporting) and, for token2mel, ``noise.npy`` (the default noise table by
absolute frame) and the default time grid in the manifest (both are inputs too).

**Baked in** (static in the compiled step; a change needs a new export): the model's architecture and sizes, the
batch ``b``, the chunk ``C``, look-ahead ``L``, frames per token ``r``, the K/V window, the number of ODE steps,
the solver and the CFG weight (token2mel); the HiFT config, the batch, the mel cache and the window lengths (HiFT).

**Contract** (the same as :class:`fmjax.pipelines.stream.Token2MelStream`, whose jitted step is what is exported):
each ``step`` gives every row up to ``C`` tokens (``lengths``) and its next ``L`` look-ahead tokens
(``lookahead_lengths``), which must arrive unchanged as the next tokens; ``final`` rows end. The loader checks shapes
and id ranges; unlike the live stream it does not check look-ahead promises (the server's job). The state's buffers
are donated to the next call (updated in place). Outputs equal the live step's (the same StableHLO runs).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FORMAT", "export_token2mel_stream", "export_hift_stream", "load_token2mel_stream", "load_hift_stream",
           "ExportedToken2MelStream", "ExportedHiFTStream"]

FORMAT = "fmjax-export/1"


# ----------------------------------------------------------------------------------------------------- export
def _spec(a) -> dict:
    return {"shape": list(np.shape(a)), "dtype": str(jnp.result_type(a))}


def _structs(leaves) -> list:
    return [jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in leaves]


def _write(path, manifest: dict, functions: dict, params_leaves, extra: dict | None = None) -> pathlib.Path:
    path = pathlib.Path(os.fspath(path))
    path.mkdir(parents=True, exist_ok=True)
    for name, exported in functions.items():
        (path / f"{name}.jaxexport").write_bytes(exported.serialize())
        manifest["functions"][name] = {"file": f"{name}.jaxexport", "platforms": list(exported.platforms),
                                       "inputs": [_spec(a) for a in exported.in_avals],
                                       "outputs": [_spec(a) for a in exported.out_avals]}
    np.savez(path / "params.npz", **{f"p{i:05d}": np.asarray(a) for i, a in enumerate(params_leaves)})
    for name, array in (extra or {}).items():
        np.save(path / f"{name}.npy", np.asarray(array))
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return path


def export_token2mel_stream(stream, params, batch: int, path, *, platforms=None) -> pathlib.Path:
    """Exports ``stream``'s compiled step (and its state constructor) for ``batch`` rows to the directory ``path``.

    Args:
      stream: a :class:`fmjax.pipelines.stream.Token2MelStream` (its model, window, steps, solver, CFG are baked in).
      params: the flow's params (stored in ``params.npz``; inputs of the exported functions).
      batch: rows ``b`` of the exported state.
      platforms: ``jax.export`` platforms (default: this backend).

    Functions: ``init(param_leaves, embedding [b, spk_embed_dim], prompt_len [b] int32) -> row_leaves`` (the empty
    state with the projected speakers) and ``step(param_leaves, row_leaves, grid [n + 1], noise [T, m],
    tokens [b, C] int32, n [b] int32, mel [b, r·C, m], ahead [b, L] int32, n_ahead [b] int32, final [b] bool) ->
    (row_leaves, mel [b, r·(2C + L), m], frames [b] int32)``.
    """
    from fmjax.noise import MAX_FRAMES, cosyvoice_noise
    from fmjax.pipelines.stream import Token2MelStream, advance_rows

    if not isinstance(stream, Token2MelStream):
        raise TypeError(f"stream: expected a Token2MelStream, got {type(stream).__name__}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
    model, cfg = stream.model, stream.model.config
    c, r, la, m, b = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len, cfg.mel_dim, batch
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    rows_shape = jax.eval_shape(lambda: stream._empty_rows(b))
    r_leaves, r_tree = jax.tree_util.tree_flatten(rows_shape)

    def init(param_leaves, embedding, prompt_len):
        p = jax.tree_util.tree_unflatten(p_tree, param_leaves)
        spks = model.apply(p, embedding, method="speaker")
        rows = stream._empty_rows(b)._replace(spks=spks, prompt_len=prompt_len)
        return jax.tree_util.tree_leaves(rows)

    def step(param_leaves, row_leaves, grid, noise, tokens, n, mel, ahead, n_ahead, final):
        p = jax.tree_util.tree_unflatten(p_tree, param_leaves)
        rows = jax.tree_util.tree_unflatten(r_tree, row_leaves)
        rows, out, frames = advance_rows(stream, p, rows, grid, noise, tokens, n, mel, ahead, n_ahead, final)
        return jax.tree_util.tree_leaves(rows), out, frames

    i32, f32 = jnp.int32, jnp.float32
    sds = jax.ShapeDtypeStruct
    kw = {} if platforms is None else {"platforms": tuple(platforms)}
    grid = stream.sampler.time_grid()
    functions = {
        "init": jax.export.export(jax.jit(init), **kw)(_structs(p_leaves), sds((b, cfg.spk_embed_dim), f32),
                                                       sds((b,), i32)),
        "step": jax.export.export(jax.jit(step), **kw)(
            _structs(p_leaves), list(r_leaves), sds(grid.shape, f32), sds((MAX_FRAMES, m), f32), sds((b, c), i32),
            sds((b,), i32), sds((b, r * c, m), f32), sds((b, la), i32), sds((b,), i32), sds((b,), bool)),
    }
    manifest = {
        "format": FORMAT, "kind": "token2mel_stream", "jax": jax.__version__, "functions": {},
        "baked_in": {"model": type(model).__name__, "config": repr(cfg), "batch": b, "chunk_tokens": c,
                     "lookahead_tokens": la, "frames_per_token": r, "mel_dim": m, "vocab_size": cfg.vocab_size,
                     "spk_embed_dim": cfg.spk_embed_dim, "window_tokens": stream.window_tokens,
                     "n_steps": stream.n_steps, "solver": stream.solver, "cfg_weight": stream.cfg_weight,
                     "max_frames_per_step": stream.max_frames_per_step, "row_leaves": len(r_leaves)},
        "defaults": {"grid": [float(g) for g in grid], "noise": "noise.npy (CosyVoice's fixed noise)"},
        "params": {"file": "params.npz", "leaves": len(p_leaves),
                   "names": [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]},
    }
    return _write(path, manifest, functions, p_leaves, {"noise": cosyvoice_noise(MAX_FRAMES, m)})


def export_hift_stream(config, params, batch: int, window_frames: int, path, *, mel_cache_len: int = 8,
                       final_lengths=None, platforms=None) -> pathlib.Path:
    """Exports CosyVoice2's streaming HiFT windows (:mod:`fmjax.vocoder_stream`) for ``batch`` rows to ``path``.

    Functions: ``init(stream_ids [b] int32, key_data uint32[2]) -> cache_leaves``; ``first(param_leaves,
    cache_leaves, mel [b, V, m], active [b] bool) -> (wav [b, 480·V − S], cache_leaves)`` (a stream's first window:
    ``V = window_frames`` new frames); ``window(...)`` the same for a later window (the 8 cached frames + ``V`` new,
    ``480·V`` samples out); ``last_<t>(...)`` a stream's last window of ``t`` new frames (``480·t + S`` samples:
    everything left), one per ``t`` in ``final_lengths`` (default ``1 .. V``; HiFT's filter is not causal, so a
    shorter last window is its own program). The key data are ``jax.random.key_data`` of a threefry key.
    """
    from fmjax.models.hift import HiFTConfig
    from fmjax.vocoder_stream import _window, init_vocoder_cache

    if not isinstance(config, HiFTConfig):
        raise TypeError(f"config: expected a HiFTConfig, got {type(config).__name__}")
    for name, value in (("batch", batch), ("window_frames", window_frames), ("mel_cache_len", mel_cache_len)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if window_frames < mel_cache_len:
        raise ValueError(f"window_frames: a first window needs >= mel_cache_len = {mel_cache_len} frames, got "
                         f"{window_frames}")
    lengths = tuple(range(1, window_frames + 1)) if final_lengths is None else tuple(int(t) for t in final_lengths)
    if not lengths or min(lengths) < 1:
        raise ValueError(f"final_lengths: expected positive frame counts, got {final_lengths!r}")
    b, m = batch, config.in_channels
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)

    def cache_of(ids, key_data):
        return init_vocoder_cache(config, b, jax.random.wrap_key_data(key_data, impl="threefry2x32"),
                                  mel_cache_len=mel_cache_len)._replace(stream_id=ids)

    shape = jax.eval_shape(lambda: cache_of(jnp.zeros((b,), jnp.int32), jnp.zeros((2,), jnp.uint32)))
    c_tree = jax.tree_util.tree_structure(shape)

    def flat(cache):
        return jax.tree_util.tree_leaves(cache._replace(key=jax.random.key_data(cache.key)))

    def unflat(leaves):
        cache = jax.tree_util.tree_unflatten(c_tree, leaves)
        return cache._replace(key=jax.random.wrap_key_data(cache.key, impl="threefry2x32"))

    def window_fn(first, final):
        def fn(param_leaves, cache_leaves, mel, active):
            wav, cache = _window(config, jax.tree_util.tree_unflatten(p_tree, param_leaves), unflat(cache_leaves), mel,
                                 None, active, first=first, final=final)
            return wav, flat(cache)
        return jax.jit(fn)

    sds = jax.ShapeDtypeStruct
    kw = {} if platforms is None else {"platforms": tuple(platforms)}
    cache_specs = jax.eval_shape(lambda: flat(cache_of(jnp.zeros((b,), jnp.int32), jnp.zeros((2,), jnp.uint32))))
    args = lambda t: (_structs(p_leaves), cache_specs, sds((b, t, m), jnp.float32), sds((b,), bool))  # noqa: E731
    functions = {
        "init": jax.export.export(jax.jit(lambda ids, key: flat(cache_of(ids, key))), **kw)(
            sds((b,), jnp.int32), sds((2,), jnp.uint32)),
        "first": jax.export.export(window_fn(True, False), **kw)(*args(window_frames)),
        "window": jax.export.export(window_fn(False, False), **kw)(*args(window_frames)),
    }
    for t in lengths:
        functions[f"last_{t}"] = jax.export.export(window_fn(False, True), **kw)(*args(t))
    manifest = {
        "format": FORMAT, "kind": "hift_stream", "jax": jax.__version__, "functions": {},
        "baked_in": {"config": repr(config), "batch": b, "window_frames": window_frames,
                     "mel_cache_len": mel_cache_len, "samples_per_frame": config.upsample_factor, "mel_dim": m,
                     "sampling_rate": config.sampling_rate, "final_lengths": list(lengths)},
        "params": {"file": "params.npz", "leaves": len(p_leaves),
                   "names": [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]},
    }
    return _write(path, manifest, functions, p_leaves)


# -------------------------------------------------------------------------------------------------- loading
def _read(path, kind: str):
    path = pathlib.Path(os.fspath(path))
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"path: {str(path)!r} holds no readable fmjax export manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise ValueError(f"path: {str(path)!r} is a {manifest.get('format')!r} / {manifest.get('kind')!r} artifact, "
                         f"expected {FORMAT!r} / {kind!r}")
    functions = {name: jax.export.deserialize(bytearray((path / f["file"]).read_bytes()))
                 for name, f in manifest["functions"].items()}
    with np.load(path / manifest["params"]["file"]) as f:
        params = [jnp.asarray(f[f"p{i:05d}"]) for i in range(manifest["params"]["leaves"])]
    return path, manifest, functions, params


def _ints(a, shape, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != tuple(shape) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integers of shape {tuple(shape)}, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < lo or (hi is not None and arr.max() > hi)):
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got {arr.tolist()}")
    return arr.astype(np.int32)


class T2MState(NamedTuple):
    """An exported token2mel stream's state: ``rows`` (device leaves, donated to the next step), ``grid``, ``noise``."""

    rows: list
    grid: Any
    noise: Any


class ExportedToken2MelStream:
    """A loaded :func:`export_token2mel_stream` artifact (see the module docstring); attributes ``manifest`` and
    ``baked`` (the baked-in configuration)."""

    def __init__(self, path):
        self.path, self.manifest, fns, self.params = _read(path, "token2mel_stream")
        self.baked = self.manifest["baked_in"]
        self._init = jax.jit(fns["init"].call)
        self._step = jax.jit(fns["step"].call, donate_argnums=(1,))
        self.noise = jnp.asarray(np.load(self.path / "noise.npy"))
        self.grid = jnp.asarray(self.manifest["defaults"]["grid"], jnp.float32)

    def init(self, embedding, prompt_tokens=None, prompt_mel=None, *, prompt_lengths=None, grid=None,
             noise=None) -> T2MState:
        """Starts ``b`` streams (as ``Token2MelStream.init``): ``embedding [b, spk_embed_dim]``, optional
        ``prompt_tokens [b, p]`` with ``prompt_mel [b, r·p, m]``; ``grid``/``noise`` default to the artifact's."""
        k = self.baked
        b, c, r, la, m = k["batch"], k["chunk_tokens"], k["frames_per_token"], k["lookahead_tokens"], k["mel_dim"]
        emb = np.asarray(embedding, np.float32)
        if emb.shape != (b, k["spk_embed_dim"]) or not np.isfinite(emb).all():
            raise ValueError(f"embedding: expected finite [{b}, {k['spk_embed_dim']}], got {emb.shape}")
        p = 0 if prompt_tokens is None else np.shape(prompt_tokens)[1] if np.ndim(prompt_tokens) == 2 else -1
        ptok = _ints(np.zeros((b, 0), np.int32) if prompt_tokens is None else prompt_tokens, (b, p), "prompt_tokens", 0,
                     k["vocab_size"] - 1)
        plen = _ints(np.full((b,), p) if prompt_lengths is None else prompt_lengths, (b,), "prompt_lengths", 0, p)
        pmel = np.zeros((b, 0, m), np.float32) if prompt_mel is None else np.asarray(prompt_mel, np.float32)
        if pmel.shape != (b, r * p, m):
            raise ValueError(f"prompt_mel: expected shape {(b, r * p, m)}, got {pmel.shape}")
        state = T2MState(self._init(self.params, jnp.asarray(emb), jnp.asarray(plen)),
                         self.grid if grid is None else jnp.asarray(grid, jnp.float32),
                         self.noise if noise is None else jnp.asarray(noise, jnp.float32))
        for start in range(0, p, c):  # the prompt through the step, as Token2MelStream.init does
            n, ahead = np.clip(plen - start, 0, c), np.clip(plen - start - c, 0, la)
            state, _, _ = self._call(state, _piece(ptok, start, c), n, _piece(pmel, r * start, r * c),
                                     _piece(ptok, start + c, la), ahead, np.zeros((b,), bool))
        return state

    def step(self, state: T2MState, tokens, lookahead=None, *, lengths=None, lookahead_lengths=None, final=False):
        """Feeds ``tokens [b, <= C]`` (and ``lookahead [b, <= L]``); returns ``(state, mel [b, F, m], frames [b])``
        (numpy; row ``i``'s new frames are ``mel[i, :frames[i]]``). ``final`` (bool or ``[b]``) ends rows."""
        k = self.baked
        b, c, la, r, m = k["batch"], k["chunk_tokens"], k["lookahead_tokens"], k["frames_per_token"], k["mel_dim"]
        if not isinstance(state, T2MState):
            raise TypeError(f"state: expected a T2MState from init, got {type(state).__name__}")
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != b or tokens.shape[1] > c:
            raise ValueError(f"tokens: expected shape [{b}, <= {c}], got {tokens.shape}")
        lookahead = np.zeros((b, 0), np.int32) if lookahead is None else np.asarray(lookahead)
        if lookahead.ndim != 2 or lookahead.shape[0] != b or lookahead.shape[1] > la:
            raise ValueError(f"lookahead: expected shape [{b}, <= {la}], got {lookahead.shape}")
        n = _ints(np.full((b,), tokens.shape[1]) if lengths is None else lengths, (b,), "lengths", 0, tokens.shape[1])
        final = np.broadcast_to(np.asarray(final, bool), (b,))
        n_ahead = _ints(np.full((b,), lookahead.shape[1]) if lookahead_lengths is None else lookahead_lengths, (b,),
                        "lookahead_lengths", 0, lookahead.shape[1])
        for name, ids, valid in (("tokens", tokens, n), ("lookahead", lookahead, n_ahead)):
            mask = np.arange(ids.shape[1])[None] < valid[:, None]
            if mask.any() and ((ids[mask] < 0) | (ids[mask] >= k["vocab_size"])).any():
                raise ValueError(f"{name}: ids outside the vocabulary [0, {k['vocab_size']})")
        return self._call(state, _piece(tokens, 0, c), n, np.zeros((b, r * c, m), np.float32),
                          _piece(lookahead, 0, la), np.where(final, 0, n_ahead), final)

    def _call(self, state, tokens, n, mel, ahead, n_ahead, final):
        rows, out, frames = self._step(self.params, state.rows, state.grid, state.noise,
                                       jnp.asarray(tokens, jnp.int32), jnp.asarray(n, jnp.int32), jnp.asarray(mel),
                                       jnp.asarray(ahead, jnp.int32), jnp.asarray(n_ahead, jnp.int32),
                                       jnp.asarray(final, bool))
        return state._replace(rows=rows), np.asarray(out), np.asarray(frames)


class ExportedHiFTStream:
    """A loaded :func:`export_hift_stream` artifact: ``init(stream_ids, key_data)``, ``first`` / ``window`` /
    ``last(params-free)`` calls on the flat cache (see :func:`export_hift_stream`)."""

    def __init__(self, path):
        self.path, self.manifest, fns, self.params = _read(path, "hift_stream")
        self.baked = self.manifest["baked_in"]
        self._fns = {name: jax.jit(f.call) if name == "init" else jax.jit(f.call, donate_argnums=(1,))
                     for name, f in fns.items()}

    def init(self, stream_ids=None, key_data=(0, 0)) -> list:
        b = self.baked["batch"]
        ids = _ints(np.arange(b) if stream_ids is None else stream_ids, (b,), "stream_ids", 0)
        return self._fns["init"](jnp.asarray(ids), jnp.asarray(np.asarray(key_data, np.uint32)))

    def window(self, cache, mel, active=None, *, first=False, final=False):
        """``(wav [b, N] numpy, cache)`` for a ``[b, t, m]`` window of new frames (see :func:`export_hift_stream`)."""
        b, m = self.baked["batch"], self.baked["mel_dim"]
        mel = np.asarray(mel, np.float32)
        if mel.ndim != 3 or mel.shape[0] != b or mel.shape[2] != m:
            raise ValueError(f"mel: expected shape [{b}, t, {m}], got {mel.shape}")
        name = f"last_{mel.shape[1]}" if final else ("first" if first else "window")
        if name not in self._fns or (not final and mel.shape[1] != self.baked["window_frames"]):
            raise ValueError(f"mel: no exported window for {mel.shape[1]} frames (first={first}, final={final}); "
                             f"windows of {self.baked['window_frames']}, last windows of "
                             f"{self.baked['final_lengths']}")
        active = np.ones((b,), bool) if active is None else np.asarray(active, bool)
        wav, cache = self._fns[name](self.params, cache, jnp.asarray(mel), jnp.asarray(active))
        return np.asarray(wav), cache


def _piece(a: np.ndarray, start: int, size: int) -> np.ndarray:
    """``a[:, start : start + size]`` zero-padded to ``size`` along axis 1."""
    piece = np.asarray(a)[:, start : start + size]
    return np.pad(piece, [(0, 0), (0, size - piece.shape[1])] + [(0, 0)] * (piece.ndim - 2))


def load_token2mel_stream(path) -> ExportedToken2MelStream:
    """Loads an :func:`export_token2mel_stream` artifact (imports no model code)."""
    return ExportedToken2MelStream(path)


def load_hift_stream(path) -> ExportedHiFTStream:
    """Loads an :func:`export_hift_stream` artifact (imports no model code)."""
    return ExportedHiFTStream(path)
