"""Streaming token2wav == offline chunk-masked token2mel + the streaming vocoder, for token arrivals of 1, 7, 25 at a
time and irregular ones; the compile bound; batched rows with the Griffin-Lim vocoder; exact lengths; errors.

Tiny random models: the shared tiny flow (C = 2, L = 3, 3 Euler steps with CFG) and a tiny HiFT whose f0
classifier is scaled up so that its source is voiced (the sine phase then integrates f0 and amplifies the flow's
float rounding: the waveform comparison with the offline path is an SNR, the exact checks are on the mel and on the
vocoder procedure).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import vocoder_stream
from fmjax.audio import MelConfig
from fmjax.models.hift import HiFTConfig, init_hift
from fmjax.pipelines.stream import _advance
from fmjax.token2mel_stream import Token2MelStream
from fmjax.token2wav import GriffinLimVocoder, HiFTVocoder, Token2Wav
from tests.models.test_flow import tiny_flow

STEPS, UP, R = 3, 480, 2  # ODE steps, samples per frame, frames per token
# Two rows with equal totals P + N = 32 (the offline batch then has no padding): prompts of 5 tokens (not aligned
# to C = 2) and 2 (aligned), 27 and 30 new tokens.
PLENS, LENGTHS = np.array([5, 2]), np.array([27, 30])
SCHEDULES = {"1": [1] * 30, "7": [7, 7, 7, 7, 2], "25": [25, 5], "irregular": [3, 1, 11, 2, 5, 8]}


def tiny_hift():
    """A HiFT used only by this file (so its compiled windows can be counted), with a voiced f0."""
    cfg = HiFTConfig(base_channels=16, f0_channels=8, f0_num_convs=2, resblock_kernel_sizes=(3,),
                     resblock_dilations=((1,),), source_resblock_kernel_sizes=(3, 3, 3),
                     source_resblock_dilations=((1,),) * 3)
    params = init_hift(cfg, seed=1)
    params["params"]["f0_predictor"]["classifier"]["kernel"] *= 500.0
    return cfg, params


@pytest.fixture(scope="module")
def setup():
    """The shared tiny flow streamed with a 32-token window (the whole stream: exact chunk masks), its params
    and a batch of two rows: ``(model, flow_params, (tokens [2, 30], emb, prompt [2, 5], prompt mel))``."""
    model, flow_params = tiny_flow(chunk=2)
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 50, (2, 30)), rng.standard_normal((2, 12)).astype(np.float32),
            rng.integers(0, 50, (2, 5)), rng.standard_normal((2, R * 5, 80)).astype(np.float32))
    return Token2MelStream(model, window_tokens=32, n_steps=STEPS), flow_params, data


def _snr_db(x, ref):
    """SNR of ``x`` against ``ref`` in dB (inf when they are equal: no division-by-zero warning)."""
    err = np.sum((np.asarray(x, np.float64) - ref) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref**2) / err))


def _stream(t2w, params, data, pieces, *, finalize_with_tokens=True):
    """Feeds row ``i`` ``pieces[j, i]`` tokens at call ``j``; the last call is ``finalize`` with its tokens (or a
    step with them, then an empty ``finalize``). Returns per-row wav and mel and the final state."""
    tokens, emb, prompt, pmel = data
    state = t2w.init(params, emb, prompt, pmel, prompt_lengths=PLENS)
    start, wav, mel = np.zeros(2, int), [[], []], [[], []]

    def record(out):
        for i in range(2):
            wav[i].append(out.wav[i]), mel[i].append(out.mel[i])

    for j, k in enumerate(pieces):
        chunk = np.stack([np.pad(tokens[i, start[i] : start[i] + k[i]], (0, k.max() - k[i])) for i in range(2)])
        if j < len(pieces) - 1 or not finalize_with_tokens:
            state, out = t2w.step(params, state, chunk, lengths=k)
            record(out)
        if j == len(pieces) - 1:
            state, out = t2w.finalize(params, state, chunk if finalize_with_tokens else None, lengths=k)
            record(out)
        start += k
    assert start.tolist() == LENGTHS.tolist()
    return [np.concatenate(w) for w in wav], [np.concatenate(m) for m in mel], state


def _pieces(schedule):
    """The same arrival schedule for both rows, each row's pieces clipped to its own length."""
    ends = np.minimum(np.cumsum(schedule)[:, None], LENGTHS[None, :])
    return np.diff(np.vstack([np.zeros((1, 2), int), ends]), axis=0)


def _check_rows(name, wav, mel, wav_off, mel_off, reference):
    """``reference(mels)`` -> per-row audio of the vocoder procedure on the streamed frames, batched as the stream."""
    ref = reference(mel)
    for i in range(2):
        assert wav[i].shape == (R * LENGTHS[i] * UP,), f"{name}, row {i}: {wav[i].shape[0]} samples, expected " \
            f"2·{LENGTHS[i]}·480"
        err = float(np.abs(mel[i] - np.asarray(mel_off.mel[i, : R * LENGTHS[i]])).max())
        assert err < 1e-5, f"{name}, row {i}: streamed vs offline chunk-masked mel max abs error {err:.3g} (tol 1e-5)"
        verr = float(np.abs(wav[i] - ref[i]).max())
        assert verr < 1e-6, f"{name}, row {i}: audio vs the vocoder procedure on its frames: max abs {verr:.3g} " \
            "(tol 1e-6)"
        snr = _snr_db(wav[i], wav_off[i])
        assert snr > 50.0, f"{name}, row {i}: streamed vs offline audio SNR {snr:.1f} dB (floor 50 dB)"


def test_token2wav_stream_equals_offline_every_schedule_compile_bound(setup):
    """Token arrivals of 1, 7, 25 at a time and irregular ones, two batched rows: the streamed frames equal offline
    chunk-masked token2mel (1e-5); each row's audio equals fmjax.vocoder_stream.vocode_stream of its frames in
    windows of V = 8, batched as the stream, with key(0) and the row's stream id (1e-6; alone: SNR > 60 dB); against the offline call's audio the SNR is >= 50 dB;
    lengths are exactly 2·N·480. All schedules and the offline call together compile the flow step at most once
    and the HiFT window at most four times: first (8 frames), steady (8 + 8) and one last window per row tail
    (54 mod 8 = 6 and 60 mod 8 = 4 frames after the 8 cached ones)."""
    stream, flow_params, data = setup
    hcfg, hparams = tiny_hift()
    t2w = Token2Wav(stream, HiFTVocoder(hcfg))
    assert t2w.window_frames == 8 and t2w.samples_per_token == R * UP
    params = t2w.prepare_params(flow_params, hparams)
    tokens, emb, prompt, pmel = data
    flow_before, voc_before = _advance._cache_size(), vocoder_stream._window._cache_size()
    wav_off, mel_off = t2w.offline(params, tokens, emb, lengths=LENGTHS, prompt_tokens=prompt, prompt_mel=pmel,
                                   prompt_lengths=PLENS)

    def reference(mels):  # the streams' batched vocoder procedure on their frames: the same programs, exact
        batch = np.zeros((2, max(len(m) for m in mels), 80), np.float32)
        for i, m in enumerate(mels):
            batch[i, : len(m)] = m
        ref = t2w.vocode(params, batch, lengths=np.array([len(m) for m in mels]))
        for i, m in enumerate(mels):  # and each row alone through fmjax.vocoder_stream (another batch size: the
            # voiced sine phase amplifies the float rounding of batched convs, so an SNR floor, not equality)
            pieces = vocoder_stream.vocode_stream(hcfg, params.vocoder, jnp.asarray(m[None]), [8] * (len(m) // 8),
                                                  jax.random.key(0), stream_ids=[i])
            alone = np.concatenate([np.asarray(p[0]) for p in pieces])
            assert _snr_db(ref[i], alone) > 60.0
        return ref

    runs = {}
    for j, (name, schedule) in enumerate(SCHEDULES.items()):
        runs[name] = _stream(t2w, params, data, _pieces(schedule), finalize_with_tokens=j % 2 == 0)
    assert _advance._cache_size() - flow_before <= 1, "the flow step compiled more than once"
    tails = {int(R * n) % 8 for n in LENGTHS} - {0}
    assert vocoder_stream._window._cache_size() - voc_before <= 2 + len(tails) == 4, "extra vocoder windows compiled"
    for name, (wav, mel, state) in runs.items():
        _check_rows(name, wav, [np.asarray(m) for m in mel], wav_off, mel_off, reference)
        assert state.samples_out.tolist() == (R * UP * LENGTHS).tolist()
        assert state.frames_out.tolist() == (R * LENGTHS).tolist()


def test_token2wav_irregular_rows_griffin_lim(setup):
    """Rows fed independently (a call may give a row nothing) through the Griffin-Lim vocoder: frames equal the
    offline batch's (1e-5), audio equals the vocoder procedure on each row's frames (1e-6; Griffin-Lim has no
    noise key, so a row vocoded alone is the same) and is close to the offline call's; lengths exact."""
    stream, flow_params, data = setup
    t2w = Token2Wav(stream, GriffinLimVocoder(n_iter=4))
    params = t2w.prepare_params(flow_params)
    tokens, emb, prompt, pmel = data
    wav_off, mel_off = t2w.offline(params, tokens, emb, lengths=LENGTHS, prompt_tokens=prompt, prompt_mel=pmel,
                                   prompt_lengths=PLENS)
    pieces = np.array([[4, 1], [0, 5], [9, 0], [3, 13], [11, 11]])
    wav, mel, _ = _stream(t2w, params, data, pieces)
    def reference(mels):
        batch = np.zeros((2, max(len(m) for m in mels), 80), np.float32)
        for i, m in enumerate(mels):
            batch[i, : len(m)] = m
        return t2w.vocode(params, batch, lengths=np.array([len(m) for m in mels]))

    _check_rows("irregular", wav, mel, wav_off, mel_off, reference)


def test_token2wav_bad_input(setup):
    stream, flow_params, (tokens, emb, prompt, pmel) = setup
    t2w = Token2Wav(stream, GriffinLimVocoder(n_iter=2))
    params = t2w.prepare_params(flow_params)
    with pytest.raises(ValueError, match=r"prompt_mel: expected shape \(2, 10, 80\)"):
        t2w.init(params, emb, prompt, pmel[..., :79])
    bad = pmel.copy()
    bad[1, 1, 3] = np.nan
    with pytest.raises(ValueError, match="prompt_mel: expected finite values"):
        t2w.init(params, emb, prompt, bad)
    with pytest.raises(ValueError, match=r"mel: expected shape \[b, t, 80\]"):
        t2w.vocode(params, np.zeros((1, 10, 81), np.float32))
    with pytest.raises(ValueError, match="mel: expected finite values"):
        t2w.vocode(params, np.full((1, 10, 80), np.nan, np.float32))
    state = t2w.init(params, emb, prompt, pmel)
    with pytest.raises(ValueError, match=r"tokens: empty chunk"):
        t2w.step(params, state, np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError, match=r"tokens: empty chunk"):
        t2w.step(params, state, tokens[:, :3], lengths=np.array([0, 0]))
    with pytest.raises(ValueError, match=r"tokens: 1 id\(s\) outside the vocabulary \[0, 50\)"):
        t2w.step(params, state, np.array([[3, 4], [3, 50]]))
    with pytest.raises(ValueError, match=r"tokens: expected shape \[2, n\]"):
        t2w.step(params, state, np.array([3, 4]))
    new, _ = t2w.step(params, state, tokens[:, :5])  # completes chunks: the flow consumes the old state
    with pytest.raises(ValueError, match="state: already consumed"):
        t2w.step(params, state, tokens[:, 5:])
    done, _ = t2w.finalize(params, new, tokens[:, 5:6])
    assert done.samples_out.tolist() == [R * 6 * UP] * 2
    with pytest.raises(ValueError, match="state: this stream was already finalized"):
        t2w.finalize(params, done)
    with pytest.raises(ValueError, match="state: this stream was already finalized"):
        t2w.step(params, done, tokens[:, :1])
    with pytest.raises(ValueError, match="vocoder_params: the HiFT vocoder needs its params"):
        Token2Wav(stream, HiFTVocoder(HiFTConfig.small())).prepare_params(flow_params)
    with pytest.raises(ValueError, match="vocoder_frames: expected an int >= the vocoder's mel cache"):
        Token2Wav(stream, GriffinLimVocoder(), vocoder_frames=4)
    with pytest.raises(ValueError, match="vocoder: takes 100 mel bins, the flow makes 80"):
        Token2Wav(stream, GriffinLimVocoder(MelConfig(n_mels=100)))


def test_token2wav_audio_does_not_depend_on_the_row(setup):
    """The same two streams in swapped rows (each keeping its stream id) give the same audio: HiFT's noise is keyed
    by the stream's id, not by its row. With swapped ids instead, the audio changes."""
    stream, flow_params, (tokens, emb, prompt, pmel) = setup
    hcfg, hparams = tiny_hift()
    t2w = Token2Wav(stream, HiFTVocoder(hcfg))
    params = t2w.prepare_params(flow_params, hparams)

    def run(order, ids):
        state = t2w.init(params, emb[order], prompt[order], pmel[order], prompt_lengths=PLENS[order], stream_ids=ids)
        state, out1 = t2w.step(params, state, tokens[order], lengths=LENGTHS[order])
        _, out2 = t2w.finalize(params, state)
        return [np.concatenate([a, b]) for a, b in zip(out1.wav, out2.wav)]

    ab = run(np.array([0, 1]), [7, 3])
    ba = run(np.array([1, 0]), [3, 7])
    for i, j in ((0, 1), (1, 0)):
        snr = _snr_db(ba[j], ab[i])
        assert snr > 60.0, f"stream {i}: audio in row {i} vs row {j}: SNR {snr:.1f} dB (floor 60 dB)"
    other = run(np.array([0, 1]), [3, 7])
    assert _snr_db(other[0], ab[0]) < 40.0  # the id does key the noise (so the check above can fail)
