"""What the corpus experiments (``matcha_decoder``, ``token2mel``) share: data, validation, generation metrics, samples.

An experiment here trains a token-conditioned mel flow on the shipped speech corpus (:mod:`fmjax.data.corpus`).
Its model is a Flax module with the flow interface that :func:`fmjax.token2mel.token2mel` drives (a config with
``vocab_size``, ``spk_embed_dim``, ``mel_dim`` and ``token_mel_ratio``; the methods ``speaker``, ``encode`` and
``estimate``), so both experiments generate through the same library code. This module supplies:

* **training batches**: length-bucketed (:class:`fmjax.data.batching.BucketedBatches`), a dict of numpy arrays
  ``mel [b, T, m]``, ``mel_mask [b, T]``, ``tokens [b, T/2]``, ``token_len [b]``, ``spk [b, 192]``, ``row_mask [b]``;
* **validation batches**: every validation utterance once, all padded to the largest bucket (or the longest
  validation utterance rounded up to 8 tokens, if longer): one compilation of the validation step; rows that only fill a batch repeat a real row with ``row_mask`` 0, so no
  row is ever empty. The trainer turns them into the validation CFM loss per flow-time bin;
* **generation metrics** (:meth:`CorpusExperiment.evaluate`): the first ``data.eval_sentences`` validation
  sentences (taken round-robin over the speakers) are generated from their tokens, their speaker's embedding and a
  prompt -- the shortest *training* utterance of the same speaker, its tokens and mel -- with the CosyVoice sampler
  defaults (cosine grid, Euler, 10 steps, CFG 0.7, CosyVoice's fixed noise), in one jitted batch, and scored by
  :class:`fmjax.metrics.SpeechScorer`. Logged, for metric ``X`` in ``mel_l1``, ``mcd``, ``ter`` (token error rate
  of the re-tokenised mel), ``spk_acc`` / ``spk_cos`` (speaker identification / cosine similarity), ``fd``
  (Fréchet distance of frame statistics to the training set's: realism), ``vuv_error``, ``f0_rmse`` (cents):
  ``val_X`` (the model), ``val_X_baseline`` (the **speaker-mean** mel: each speaker's mean training frame
  repeated), ``val_X_lookup`` (the **lookup decoder**: each token -> the mean of the target speaker's training
  frames with that token), and ``val_X_truth`` for the ceilings that are not 0 by construction (``spk_acc``,
  ``spk_cos``, ``fd``); plus ``val_l1_ratio`` = model / speaker-mean mel L1 and ``val_l1_ratio_lookup`` = model /
  lookup mel L1. The baselines and ceilings are computed once;
* **samples** (:meth:`CorpusExperiment.write_samples`): ``samples/step_NNNNNN.png`` (ground truth vs generated
  mel of validation sentence ``data.sample_sentence``), ``samples/step_NNNNNN_stats.png`` (F0 of that sentence and
  per-bin mel mean/std over the evaluation sentences: ground truth, generated, lookup),
  ``samples/step_NNNNNN.wav`` (the generated mel through Griffin-Lim, 24 kHz) and, once,
  ``samples/reference_<id>.wav`` (the ground-truth mel through the same Griffin-Lim, to tell vocoder artefacts
  from model errors), ``samples/step_NNNNNN_loudness.json`` (RMS and peak dBFS of the generated and the reference
  audio before the soft limit, their differences, the samples above full scale; also logged); and ``metrics.png`` in the workdir: every generation metric against the training step with
  its baselines and ceiling (:func:`train.plots.plot_speech_metrics`, from ``metrics.jsonl``, rewritten at every
  evaluation, so the last one covers the whole run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.data.batching import BucketedBatches, collate
from fmjax.data.corpus import load_corpus
from fmjax.metrics import METRICS, SpeechScorer, mel_l1
from fmjax.metrics import speaker_means as _speaker_means
from fmjax.samplers import SamplerConfig
from fmjax.token2mel import token2mel
from train.experiment import Experiment
from train.files import atomic_write_text

__all__ = ["CorpusData", "CorpusExperiment", "MEL_NORMS", "mel_statistics", "speaker_means", "speaker_mean_baseline", "eval_pairs", "BATCH_KEYS"]

log = logging.getLogger(__name__)

BATCH_KEYS = ("mel", "mel_mask", "tokens", "token_len", "spk", "row_mask")


@dataclasses.dataclass(frozen=True)
class CorpusData:
    """Corpus, batching and evaluation settings.

    Attributes:
      corpus: a corpus directory (``python -m fmjax.data.prepare`` makes one); "" = the shipped ``data/corpus``.
      buckets: increasing token lengths of the training batches (frames = 2 x tokens): one train-step
        compilation each. Utterances longer than the last are dropped (logged); the shipped corpus's longest
        has 89 tokens (``us_f4/013``), so its buckets end at 90.
      eval_sentences: validation sentences generated for ``val_mel_l1``/``val_mcd`` (round-robin over speakers).
      sampler: the evaluation sampler (:class:`fmjax.samplers.SamplerConfig`; CosyVoice's defaults: cosine grid, 10
        Euler steps, CFG 0.7).
      sample_sentence: which of the generated sentences goes into the sample PNG and wav.
      griffin_lim_iters: Griffin-Lim iterations for the sample wavs.
    """

    corpus: str = ""
    buckets: tuple[int, ...] = (48, 64, 90)
    eval_sentences: int = 8
    sampler: SamplerConfig = SamplerConfig()
    sample_sentence: int = 0
    griffin_lim_iters: int = 32

    def __post_init__(self):
        buckets = tuple(self.buckets)
        if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"data.buckets: expected strictly increasing positive token lengths, got {self.buckets!r}")
        if self.eval_sentences < 1:
            raise ValueError(f"data.eval_sentences: expected an int >= 1, got {self.eval_sentences!r}")
        if not 0 <= self.sample_sentence < self.eval_sentences:
            raise ValueError(f"data.sample_sentence: expected an index in [0, data.eval_sentences = "
                             f"{self.eval_sentences}), got {self.sample_sentence!r}")
        if self.griffin_lim_iters < 0:
            raise ValueError(f"data.griffin_lim_iters: expected an int >= 0, got {self.griffin_lim_iters!r}")
        if not isinstance(self.sampler, SamplerConfig):
            raise TypeError(f"data.sampler: expected a fmjax.samplers.SamplerConfig, got {type(self.sampler).__name__}")


# ------------------------------------------------------------------------------------------------ baselines


def speaker_means(utterances, n_speakers: int) -> np.ndarray:
    """``[S, m]`` float32: the mean log-mel frame of each speaker over all of its utterances' frames (zeros for a
    speaker without frames); :func:`fmjax.metrics.speaker_means`."""
    return _speaker_means(utterances, n_speakers)


def speaker_mean_baseline(means: np.ndarray, speaker: np.ndarray, frames: int) -> np.ndarray:
    """The trivial prediction ``[b, frames, m]``: each row's speaker mean ``means[speaker[i]]`` on every frame."""
    rows = np.asarray(means)[np.asarray(speaker)]  # [b, m]
    return np.repeat(rows[:, None, :], frames, axis=1)  # [b, frames, m]


def eval_pairs(corpus, k: int) -> list[tuple]:
    """``k`` validation utterances, round-robin over the speakers (first utterance of each speaker, then the
    second, ...), each paired with its prompt: the shortest training utterance of the same speaker."""
    by_speaker: dict[int, list] = {}
    for u in corpus.valid:
        by_speaker.setdefault(u.speaker_index, []).append(u)
    order = sorted(((i, s) for s, us in by_speaker.items() for i in range(len(us))))
    targets = [by_speaker[s][i] for i, s in order]
    if k > len(targets):
        raise ValueError(f"data.eval_sentences: expected at most the {len(targets)} validation utterances, got {k}")
    prompts = {}
    for u in corpus.train:
        best = prompts.get(u.speaker_index)
        if best is None or u.tokens.shape[0] < best.tokens.shape[0]:
            prompts[u.speaker_index] = u
    missing = sorted({corpus.speakers[u.speaker_index] for u in targets[:k]} - {corpus.speakers[s] for s in prompts})
    if missing:
        raise ValueError(f"corpus: speakers {missing} have validation but no training utterances (no prompt)")
    return [(u, prompts[u.speaker_index]) for u in targets[:k]]


MEL_NORMS = ("none", "global", "per_bin")


def mel_statistics(utterances, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The mel normalisation of ``kind`` from (training) ``utterances``: ``(mean [m], std [m])`` float32, or None
    for ``"none"``. ``"global"`` is Matcha-TTS's (one mean and std over every value of every training frame,
    broadcast to the bins), ``"per_bin"`` one mean and std per mel bin. Computed in float64."""
    if kind not in MEL_NORMS:
        raise ValueError(f"model.mel_norm: expected one of {MEL_NORMS}, got {kind!r}")
    if kind == "none":
        return None
    frames = np.concatenate([np.asarray(u.mel, np.float64) for u in utterances])  # [N, m]
    if kind == "global":
        mean, std = np.full(frames.shape[1], frames.mean()), np.full(frames.shape[1], frames.std())
    else:
        mean, std = frames.mean(axis=0), frames.std(axis=0)
    if not np.all(std > 0):
        raise ValueError(f"model.mel_norm={kind!r}: the training mels have a constant bin (std 0); use 'global'")
    return mean.astype(np.float32), std.astype(np.float32)


# the ceilings that are not 0 by construction (mel L1, MCD, TER, voicing and F0 errors of the truth are 0)
TRUTH_KEYS = ("spk_acc", "spk_cos", "fd")


def _padded(arrays, width: int, dtype) -> np.ndarray:
    """Stacks ``[n_i, ...]`` arrays into ``[len, width, ...]`` with zeros after each."""
    out = np.zeros((len(arrays), width) + arrays[0].shape[1:], dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


# ----------------------------------------------------------------------------------------------- experiment


class CorpusExperiment(Experiment):
    """A corpus experiment; subclasses set :attr:`model` (a flow-interface module) in ``__init__`` after calling
    ``super().__init__`` and implement ``init_params`` and ``loss_fn``.

    Attributes:
      corpus: the loaded :class:`fmjax.data.corpus.Corpus`.
      model: the Flax module (set by the subclass).
    """

    model = None
    resume_safe_keys = (  # evaluation only (the generated sentences, their sampler, the samples): may change on resume
        "data.eval_sentences", "data.sampler.grid", "data.sampler.n_steps", "data.sampler.solver",
        "data.sampler.cfg_weight", "data.sample_sentence", "data.griffin_lim_iters",
    )

    def __init__(self, config):
        super().__init__(config)
        dc, tc = config.data, config.train
        try:
            self.corpus = load_corpus(dc.corpus or None)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data.corpus: {e}") from e
        self._train = BucketedBatches(self.corpus.train, tc.batch_size, dc.buckets, tc.seed)
        self._pairs = eval_pairs(self.corpus, dc.eval_sentences)
        self._means = speaker_means(self.corpus.train, len(self.corpus.speakers))
        self._scorer = SpeechScorer(self.corpus)  # baselines, tokenizer, speaker and realism references
        self.mel_stats = mel_statistics(self.corpus.train, getattr(config.model, "mel_norm", "none"))
        self._generated = None  # (step, generated mels) shared by evaluate and write_samples

    def check_model_config(self, vocab_size: int, spk_embed_dim: int) -> None:
        """Raises ``ValueError`` unless the model's vocabulary and speaker width fit the corpus."""
        c = self.corpus
        if vocab_size != c.vocab_size:
            raise ValueError(f"model vocab_size: expected the corpus's {c.vocab_size} tokens, got {vocab_size}")
        width = c.spk_embeddings.shape[1]
        if spk_embed_dim != width:
            raise ValueError(f"model spk_embed_dim: expected the corpus's speaker embedding width {width}, "
                             f"got {spk_embed_dim}")

    # ------------------------------------------------------------------------------------------------- data
    @staticmethod
    def _as_dict(batch) -> dict:
        return {k: getattr(batch, k) for k in BATCH_KEYS}

    def train_batches(self, seed: int, position: int):
        batches = self._train if seed == self._train.seed else BucketedBatches(
            self.corpus.train, self.config.train.batch_size, self.config.data.buckets, seed)
        for batch in batches.iterate(position):
            position += 1
            yield self._as_dict(batch), position

    def eval_batches(self):
        utts, b = self.corpus.valid, self.config.train.batch_size
        longest = max(u.tokens.shape[0] for u in utts)
        width = max(self.config.data.buckets[-1], -(-longest // 8) * 8)  # one shape for all of them
        batches = []
        for first in range(0, len(utts), b):
            idx = list(range(first, min(first + b, len(utts))))
            batch = self._as_dict(collate(utts, idx + [idx[0]] * (b - len(idx)), width))  # fillers repeat row 0
            batch["row_mask"] = (np.arange(b) < len(idx)).astype(np.float32)
            batches.append(batch)
        return batches

    # ---------------------------------------------------------------------------------------- normalisation
    def normalize_mel(self, mel, mask=None):
        """``(mel - mean) / std`` in the model's mel space (identity without ``model.mel_norm``), zero where
        ``mask [.., T]`` is 0. numpy in, numpy out; jax in (inside the loss), jax out."""
        if self.mel_stats is None:
            return mel
        xp = np if isinstance(mel, np.ndarray) else jnp
        mean, std = (xp.asarray(a, mel.dtype) for a in self.mel_stats)
        out = (mel - mean) / std
        return out if mask is None else out * xp.asarray(mask, mel.dtype)[..., None]

    def denormalize_mel(self, mel: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize_mel` on generated ``mel [k, F, m]`` (numpy), zero past ``lengths``:
        what is scored and vocoded is always a log-mel in the corpus's units."""
        if self.mel_stats is None:
            return mel
        mean, std = self.mel_stats
        valid = np.arange(mel.shape[1])[None, :] < np.asarray(lengths)[:, None]
        return ((mel * std + mean) * valid[..., None]).astype(mel.dtype)

    # ------------------------------------------------------------------------------------------- generation
    def generation_inputs(self) -> dict:
        """The :func:`fmjax.token2mel.token2mel` inputs of the evaluation sentences (numpy): ``tokens``,
        ``embedding``, ``lengths``, ``prompt_tokens``, ``prompt_mel`` and ``prompt_lengths``."""
        targets, prompts = [t for t, _ in self._pairs], [p for _, p in self._pairs]
        return dict(
            tokens=_padded([u.tokens for u in targets], max(u.tokens.shape[0] for u in targets), np.int32),
            embedding=np.stack([u.spk for u in targets]),
            lengths=np.array([u.tokens.shape[0] for u in targets], np.int32),
            prompt_tokens=_padded([u.tokens for u in prompts], max(u.tokens.shape[0] for u in prompts), np.int32),
            prompt_mel=_padded([self.normalize_mel(u.mel) for u in prompts], max(u.mel.shape[0] for u in prompts),
                               np.float32),
            prompt_lengths=np.array([u.tokens.shape[0] for u in prompts], np.int32),
        )

    def generate(self, params, **sampler) -> tuple[np.ndarray, np.ndarray]:
        """The evaluation sentences generated in one batch: ``(mel [k, F, m], lengths [k])`` (numpy, zero past each
        row's length). ``sampler`` overrides :func:`~fmjax.token2mel.token2mel`'s ``grid``, ``n_steps``,
        ``solver``, ``cfg_weight`` (default: ``data``'s) or passes ``key``/``noise``. With ``model.mel_norm`` the
        prompt is normalised and the output de-normalised: the mels returned are in the corpus's log-mel units."""
        dc = self.config.data
        s = dc.sampler
        settings = dict(grid=s.grid, n_steps=s.n_steps, solver=s.solver, cfg_weight=s.cfg_weight) | sampler
        out = token2mel(self.model, params, **self.generation_inputs(), **settings)
        mel, lengths = np.asarray(jax.device_get(out.mel)), np.asarray(jax.device_get(out.lengths))
        return self.denormalize_mel(mel, lengths), lengths

    def _generated_at(self, params, step: int) -> np.ndarray:
        if self._generated is None or self._generated[0] != step:
            self._generated = (step, self.generate(params)[0])
        return self._generated[1]

    def evaluate(self, params, step, workdir):
        return self.score(self._generated_at(params, step))

    def score(self, mel: np.ndarray) -> dict[str, float]:
        """Every metric of generated evaluation sentences ``mel [k, F, m]`` (as :meth:`generate` returns them,
        zero past each row's length) with the speaker-mean baseline, the lookup decoder and the ground-truth
        ceilings (the keys are listed in the module docstring)."""
        targets = [t for t, _ in self._pairs]
        lengths = np.array([u.frames for u in targets], np.int32)
        model = self._scorer.score(mel, lengths, targets)
        ref = self._scorer.reference_scores(targets)
        out = {}
        for key in (k for k in METRICS if k in model):  # no "ter" for a corpus without a tokenizer
            out[f"val_{key}"] = model[key]
            out[f"val_{key}_baseline"] = ref["speaker_mean"][key]
            out[f"val_{key}_lookup"] = ref["lookup"][key]
        for key in TRUTH_KEYS:
            out[f"val_{key}_truth"] = ref["ground_truth"][key]
        out["val_l1_ratio"] = model["mel_l1"] / ref["speaker_mean"]["mel_l1"]
        out["val_l1_ratio_lookup"] = model["mel_l1"] / ref["lookup"]["mel_l1"]
        return out

    def write_samples(self, params, step, workdir):
        import matplotlib.pyplot as plt

        from fmjax.audio import save_wav
        from fmjax.griffin_lim import griffin_lim_vocoder
        from fmjax.metrics import plot_speech_stats
        from fmjax.plotting import plot_mels

        mel = self._generated_at(params, step)
        if jax.process_index() != 0:
            return []
        dc = self.config.data
        target = self._pairs[dc.sample_sentence][0]
        n = target.mel.shape[0]
        generated = mel[dc.sample_sentence, :n]  # [n, m]
        out = pathlib.Path(workdir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        l1 = float(mel_l1(generated[None], target.mel[None])[0])
        fig = plot_mels({"ground truth": target.mel, "generated": generated},
                        title=f"{self.config.experiment} step {step}: {target.id}, mel L1 {l1:.3f}\n\"{target.text}\"")
        png = out / f"step_{step:06d}.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        targets = [t for t, _ in self._pairs]
        stats = plot_speech_stats(
            out / f"step_{step:06d}_stats.png",
            {"ground truth": [u.mel for u in targets], "generated": [mel[i, : u.frames] for i, u in enumerate(targets)],
             "lookup": [self._scorer.lookup.decode(u.tokens, u.speaker_index) for u in targets]},
            index=dc.sample_sentence, config=self.corpus.config,
            title=f"{self.config.experiment} step {step}: {len(targets)} evaluation sentences")
        sr = self.corpus.config.sample_rate
        wav = out / f"step_{step:06d}.wav"
        audio = np.asarray(griffin_lim_vocoder(jnp.asarray(generated[None]), self.corpus.config,
                                               n_iter=dc.griffin_lim_iters))[0]
        save_wav(wav, audio, sr)
        ref_audio = np.asarray(griffin_lim_vocoder(jnp.asarray(target.mel[None]), self.corpus.config,
                                                   n_iter=dc.griffin_lim_iters))[0]
        level = self._loudness_record(step, target.id, audio, ref_audio)
        atomic_write_text(out / f"step_{step:06d}_loudness.json", json.dumps(level, indent=1) + "\n")
        paths = [png, stats, wav, out / f"step_{step:06d}_loudness.json"]
        from train.metrics import read_metrics
        from train.plots import plot_speech_metrics

        metrics_png = plot_speech_metrics(read_metrics(pathlib.Path(workdir) / "metrics.jsonl"),
                                          pathlib.Path(workdir) / "metrics.png", self.config.experiment)
        if metrics_png is not None:
            paths.append(metrics_png)
        reference = out / f"reference_{target.id.replace('/', '_')}.wav"
        if not reference.exists():
            save_wav(reference, ref_audio, sr)
            paths.append(reference)
        return paths

    @staticmethod
    def _loudness_record(step: int, utterance: str, audio: np.ndarray, ref_audio: np.ndarray) -> dict:
        """The sample's loudness against the ground truth's through the same Griffin-Lim (before the soft limit of
        :func:`fmjax.audio.save_wav`): RMS and peak in dBFS, their differences, and the samples above full scale."""
        from fmjax.audio import loudness

        gen, ref = loudness(audio), loudness(ref_audio)
        record = {"step": step, "utterance": utterance, "generated": gen, "reference": ref,
                  "rms_db_vs_reference": gen["rms_dbfs"] - ref["rms_dbfs"],
                  "peak_db_vs_reference": gen["peak_dbfs"] - ref["peak_dbfs"],
                  "samples_above_full_scale": int(np.sum(np.abs(audio) > 1.0))}
        log.info("step %d sample %s: loudness %.1f dBFS RMS / %.1f dBFS peak (reference %.1f / %.1f)", step, utterance,
                 gen["rms_dbfs"], gen["peak_dbfs"], ref["rms_dbfs"], ref["peak_dbfs"])
        return record
