"""Offline evaluation of generated log-mels, like the field's but with no downloaded model.

* distances to the aligned ground truth: :func:`mel_l1`, :func:`mel_cepstral_distortion` (:mod:`.distances`);
* content: :func:`token_error_rate` of the re-tokenised mel (:mod:`.tokens`);
* speaker: identification and cosine similarity under the corpus's embedding recipe (:class:`SpeechScorer`);
* realism: :func:`frechet_distance` between frame-feature statistics (:mod:`.realism`);
* F0 and voicing: :func:`f0_from_mel`, :func:`f0_agreement` (:mod:`.pitch`), and the plot
  :func:`plot_speech_stats` (:mod:`.plots`);
* baselines from a corpus's training split: :func:`speaker_means`, :class:`LookupDecoder` (:mod:`.baselines`).

:class:`SpeechScorer` (:mod:`.scorer`) bundles them: ``scorer = SpeechScorer(corpus)`` once, then
``scorer.score(mel, lengths, utterances)`` and ``scorer.reference_scores(utterances)`` (ground truth and both
baselines).

Intelligibility by an offline recogniser was measured and left out: pocketsphinx's default English model
transcribes the espeak-ng ground truth itself with a WER far too high to rank models (``data/corpus/README.md``).
"""

from fmjax.metrics.baselines import LookupDecoder, speaker_means
from fmjax.metrics.distances import MCD_SCALE, dct_basis, mel_cepstral_distortion, mel_cepstrum, mel_l1
from fmjax.metrics.pitch import VOICING_THRESHOLD, f0_agreement, f0_from_mel
from fmjax.metrics.plots import plot_speech_stats
from fmjax.metrics.realism import FrameStats, frame_features, frechet_distance
from fmjax.metrics.scorer import BASELINES, METRICS, SpeechScorer
from fmjax.metrics.tokens import edit_distance, speaker_classifier_accuracy, token_error_rate

__all__ = [
    "MCD_SCALE", "dct_basis", "mel_cepstrum", "mel_l1", "mel_cepstral_distortion",
    "edit_distance", "token_error_rate", "speaker_classifier_accuracy",
    "FrameStats", "frame_features", "frechet_distance",
    "VOICING_THRESHOLD", "f0_from_mel", "f0_agreement", "plot_speech_stats",
    "speaker_means", "LookupDecoder",
    "SpeechScorer", "METRICS", "BASELINES",
]
