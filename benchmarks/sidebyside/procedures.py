"""The torch procedures timed against fmjax: each ``*_call`` returns a zero-argument callable that runs one call.

Inputs are numpy arrays in **torch layout** (conv tensors ``(B, C, T)``); fmjax takes ``(B, T, C)``: swap the
last two axes. Every callable runs under ``torch.inference_mode()`` except the training step.

=====================================  ===========================================================================
procedure                              what it calls (CosyVoice ace7c47)
=====================================  ===========================================================================
:func:`estimator_call`                 ``CausalConditionalDecoder.forward(x, mask, mu, t, spks, cond, streaming)``
:func:`flow_offline_call`              ``CausalMaskedDiffWithXvec.inference(..., streaming=False, finalize=True)``:
                                       encoder + 10 cosine Euler steps with CFG 0.7 (batch-doubled), fixed noise
:func:`hift_call`                      ``HiFTGenerator.inference(speech_feat, cache_source)`` -> (speech, source)
:func:`stream_cosyvoice2`              ``CosyVoice2Model.tts(stream=True)``'s driver loop around the real
                                       ``CosyVoice2Model.token2wav`` (prefix re-computation per hop)
:func:`make_train_step`                ``CausalMaskedDiffWithXvec.forward(batch)["loss"]``, backward, clip 5, Adam
=====================================  ===========================================================================
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid

import numpy as np
import torch

MEL, SPK_IN, RATIO, LOOKAHEAD = 80, 192, 2, 3  # mel bins, speaker vector, frames per token, look-ahead tokens


# ------------------------------------------------------------------------------------------------------ inputs
def estimator_inputs(b: int, t: int, *, seed: int = 0, t_value: float = 0.5) -> dict[str, np.ndarray]:
    """Random estimator arguments (torch layout): x, mu ~ N(0, 1) ``(b, 80, t)``, spks ``(b, 80)``, mask ones
    ``(b, 1, t)``, cond zeros ``(b, 80, t)`` (no prompt), t = ``t_value`` ``(b,)``: the offline benchmark's inputs."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((b, MEL, t), np.float32), "mask": np.ones((b, 1, t), np.float32),
            "mu": rng.standard_normal((b, MEL, t), np.float32), "t": np.full((b,), t_value, np.float32),
            "spks": rng.standard_normal((b, MEL), np.float32), "cond": np.zeros((b, MEL, t), np.float32)}


def random_tokens(n: int, *, vocab: int = 6561, seed: int = 0) -> np.ndarray:
    """``(1, n)`` int32 speech tokens uniform in ``[0, vocab)``."""
    return np.random.default_rng(seed).integers(0, vocab, (1, n)).astype(np.int32)


def random_embedding(*, seed: int = 0) -> np.ndarray:
    """``(1, 192)`` speaker x-vector ~ N(0, 1) (the flow L2-normalises it)."""
    return np.random.default_rng(seed).standard_normal((1, SPK_IN), np.float32)


def train_batch(b: int = 4, frames: int = 500, *, vocab: int = 6561, seed: int = 0) -> dict[str, np.ndarray]:
    """A CosyVoice flow training batch without padding: ``speech_token (b, frames/2)``, ``speech_feat
    (b, frames, 80)`` ~ N(-4, 2²) (log-mel-like), lengths, ``embedding (b, 192)``."""
    if frames % RATIO:
        raise ValueError(f"frames: expected a multiple of {RATIO} (frames per token), got {frames}")
    rng = np.random.default_rng(seed)
    u = frames // RATIO
    return {"speech_token": rng.integers(0, vocab, (b, u)).astype(np.int32),
            "speech_token_len": np.full((b,), u, np.int32),
            "speech_feat": rng.normal(-4.0, 2.0, (b, frames, MEL)).astype(np.float32),
            "speech_feat_len": np.full((b,), frames, np.int32),
            "embedding": rng.standard_normal((b, SPK_IN)).astype(np.float32)}


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ------------------------------------------------------------------------------------------------- procedures
def estimator_call(est, inputs: dict, *, streaming: bool = False):
    """``run() -> (b, 80, t)`` tensor: one estimator forward (full-context attention unless ``streaming``)."""
    args = {k: _t(v) for k, v in inputs.items()}

    def run():
        with torch.inference_mode():
            return est(args["x"], args["mask"], args["mu"], args["t"], args["spks"], args["cond"], streaming=streaming)

    return run


def _flow_args(tokens, embedding, prompt_tokens, prompt_feat):
    tokens = _t(np.asarray(tokens, np.int32))
    prompt_tokens = torch.zeros(1, 0, dtype=torch.int32) if prompt_tokens is None else _t(np.asarray(prompt_tokens,
                                                                                                      np.int32))
    prompt_feat = torch.zeros(1, 0, MEL) if prompt_feat is None else _t(np.asarray(prompt_feat, np.float32))
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens: expected shape (1, n) (CosyVoice's flow runs batch 1), got {tuple(tokens.shape)}")
    if prompt_feat.shape[1] != RATIO * prompt_tokens.shape[1]:
        raise ValueError(f"prompt_feat: expected {RATIO} frames per prompt token ({RATIO * prompt_tokens.shape[1]}), "
                         f"got {prompt_feat.shape[1]}")
    return tokens, prompt_tokens, prompt_feat, _t(np.asarray(embedding, np.float32))


def flow_offline_call(flow, tokens, embedding, *, prompt_tokens=None, prompt_feat=None, streaming: bool = False):
    """``run() -> (1, 80, 2n)`` mel: ``flow.inference(finalize=True)`` as ``token2wav(stream=False)`` calls it.

    Args: ``tokens (1, n)``; ``embedding (1, 192)``; optional ``prompt_tokens (1, p)`` and ``prompt_feat
    (1, 2p, 80)`` (CosyVoice's layout, time before mel bins).
    """
    tokens, prompt_tokens, prompt_feat, embedding = _flow_args(tokens, embedding, prompt_tokens, prompt_feat)
    length = lambda x: torch.tensor([x.shape[1]], dtype=torch.int32)  # noqa: E731

    def run():
        mel, _ = flow.inference(token=tokens, token_len=length(tokens), prompt_token=prompt_tokens,
                                prompt_token_len=length(prompt_tokens), prompt_feat=prompt_feat,
                                prompt_feat_len=length(prompt_feat), embedding=embedding, streaming=streaming,
                                finalize=True)
        return mel

    return run


def hift_call(hift, mel):
    """``run() -> (speech (1, 480·T), source (1, 1, 480·T))``: ``hift.inference(mel (1, 80, T))``, no cache."""
    mel = _t(np.asarray(mel, np.float32))
    return lambda: hift.inference(speech_feat=mel, cache_source=torch.zeros(1, 1, 0))


@contextlib.contextmanager
def recording_randn_like():
    """Records every ``torch.randn_like`` draw (SineGen2's (B, L, 9) sine noise comes first; see SPEC §6)."""
    draws, original = [], torch.randn_like

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    torch.randn_like = wrapped
    try:
        yield draws
    finally:
        torch.randn_like = original


def hift_recorded(hift, mel) -> dict[str, np.ndarray]:
    """One ``hift.inference`` with its draws recorded: ``speech (1, L)``, ``source (1, L)`` and ``sine_noise
    (1, L, 9)`` in logical order, what fmjax's ``hift_inference(sine_noise=...)`` takes (or compare the filter
    alone: ``hift_decode(mel, source)``)."""
    with recording_randn_like() as draws:
        speech, source = hift_call(hift, mel)()
    sine = next(d for d in draws if d.ndim == 3 and d.shape[-1] == hift.nb_harmonics + 1)
    return {"speech": speech.numpy(), "source": source[:, 0].numpy(), "sine_noise": sine.numpy()}


# -------------------------------------------------------------------------------------------------- streaming
class _Timed:
    """Wraps a module's ``inference`` to log its duration (and the flow's output) per call."""

    def __init__(self, module, log: list):
        self._module, self._log = module, log

    def inference(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self._module.inference(*args, **kwargs)
        self._log.append({"seconds": time.perf_counter() - t0, "out": out[0], "kwargs": kwargs})
        return out

    def __getattr__(self, name):
        return getattr(self._module, name)


def stream_cosyvoice2(orig, flow, hift, tokens, embedding, *, prompt_tokens=None, prompt_feat=None,
                      hop_growth: bool = False) -> dict:
    """CosyVoice2's streaming token2wav over ``tokens (1, n)``, all present from the start (the LLM finished).

    The driver loop of ``CosyVoice2Model.tts(stream=True)`` (cli/model.py), around the original
    ``CosyVoice2Model.token2wav`` of a fresh ``CosyVoice2Model(None, flow, hift)``: while at least hop + 3
    (pre-lookahead) tokens are unconsumed, re-run the flow over prompt + ``tokens[:offset + hop + 3]`` (chunk
    masks, ``finalize=False``: the last 3 tokens are look-ahead only), keep the frames from ``2·offset``, prepend
    the 8 cached mel frames, vocode with the 3840 cached source samples, cross-fade 3840 samples with the
    previous call's tail and withhold the new tail; then one final call over all tokens (``finalize=True``, full
    attention since the original passes no ``stream``). The first hop is padded by ``ceil(p/25)·25 − p`` so that
    prompt + first chunk end on a 25-token chunk boundary. Omitted: the loop's ``time.sleep(0.1)`` polling (it
    waits for the LLM, not for compute).

    Args:
      hop_growth: False: a 25-token hop every call (what the issue compares); True: the original's schedule
        25, 50, 100, 100, ... (``stream_scale_factor`` 2, capped at ``token_max_hop_len`` 100).

    Returns:
      ``{"chunks": [per call: tokens, token_offset, finalize, new_frames, samples, flow_s, hift_s, total_s],
      "mel": (1, 80, 2n) the new frames of every call joined, "speech": (1, 480·2n), "total_s",
      "first_chunk_s"}``.
    """
    tokens, prompt_tokens, prompt_feat, embedding = _flow_args(tokens, embedding, prompt_tokens, prompt_feat)
    flow_log, hift_log = [], []
    model = orig.CosyVoice2Model(None, _Timed(flow, flow_log), _Timed(hift, hift_log))
    if not hop_growth:
        model.stream_scale_factor = 1
    this_uuid = str(uuid.uuid1())
    model.hift_cache_dict[this_uuid] = None
    n, look = tokens.shape[1], flow.pre_lookahead_len
    pad = int(math.ceil(prompt_tokens.shape[1] / model.token_hop_len) * model.token_hop_len - prompt_tokens.shape[1])
    chunks, speech, mels = [], [], []

    def call(upto, offset, finalize):
        t0 = time.perf_counter()
        kw = {} if finalize else {"stream": True}
        out = model.token2wav(token=tokens[:, :upto], prompt_token=prompt_tokens, prompt_feat=prompt_feat,
                              embedding=embedding, token_offset=offset, uuid=this_uuid, finalize=finalize, **kw)
        total = time.perf_counter() - t0
        new = flow_log[-1]["out"][:, :, RATIO * offset:]
        mels.append(new)
        speech.append(out)
        chunks.append({"tokens": upto, "token_offset": offset, "finalize": finalize, "new_frames": new.shape[2],
                       "samples": out.shape[1], "flow_s": flow_log[-1]["seconds"], "hift_s": hift_log[-1]["seconds"],
                       "total_s": total})

    offset = 0
    while True:
        hop = model.token_hop_len + pad if offset == 0 else model.token_hop_len
        if n - offset >= hop + look:
            call(offset + hop + look, offset, False)
            offset += hop
            model.token_hop_len = min(model.token_max_hop_len, model.token_hop_len * model.stream_scale_factor)
        if n - offset < hop + look:  # llm_end is True from the start
            break
    call(n, offset, True)
    return {"chunks": chunks, "mel": torch.cat(mels, 2).numpy(), "speech": torch.cat(speech, 1).numpy(),
            "total_s": sum(c["total_s"] for c in chunks), "first_chunk_s": chunks[0]["total_s"]}


# --------------------------------------------------------------------------------------------------- training
def make_train_step(flow, *, lr: float = 1e-5, grad_clip: float = 5.0, seed: int = 0):
    """``step(batch) -> loss`` (a float): CosyVoice's flow training step without DDP/AMP.

    ``flow.train()`` (encoder dropout 0.1 on); ``loss = flow(batch, cpu)["loss"]`` (unified training: each call
    draws, with Python's ``random``, chunk masks or full context with probability 1/2, and per row a prompt
    prefix; cost does not depend on these draws: the attention is dense either way); ``loss.backward()``;
    ``clip_grad_norm_(grad_clip)``; ``Adam(lr).step()`` if the norm is finite; ``zero_grad()`` (train_utils.py
    ``batch_backward`` + ``update_parameter_and_lr`` with accum_grad 1; yaml train_conf: adam, lr 1e-5, clip 5).
    Python's ``random`` and torch are seeded with ``seed`` here.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    flow.train()
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    cpu = torch.device("cpu")

    def step(batch: dict) -> float:
        tb = {k: _t(v) for k, v in batch.items()}
        loss = flow(tb, cpu)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if torch.isfinite(norm):
            opt.step()
        opt.zero_grad()
        return float(loss.detach())

    return step
