"""Prints the measured tables of ``data/corpus/README.md``: speaker identity in tokens, ground truth and baselines.

    python scripts/corpus_report.py [--corpus data/corpus] [--json out.json]

1. *Speaker identity in tokens*: the leave-one-utterance-out accuracy of a naive-Bayes speaker classifier on
   token histograms (:func:`fmjax.metrics.speaker_classifier_accuracy`; chance = 1 / speakers) for the corpus's
   tokens, its phone-state labels (``alignment.npz``: the floor that the content itself sets), and k-means
   tokenizers refitted here on the training split: over speaker-normalised cepstra (``--fit-tokenizer``'s
   design) and over standardised pairs of log-mel frames (the design of the corpus before issue 12).
2. *Ground truth and baselines* (:class:`fmjax.metrics.SpeechScorer`) on the 32 validation sentences and on the
   8 that the corpus experiments generate (``train.corpus_experiment.eval_pairs``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmjax.data.corpus import load_corpus  # noqa: E402
from fmjax.data.kmeans import fit_kmeans  # noqa: E402
from fmjax.data.tokenizer import SpeechTokenizer, pair_frames  # noqa: E402
from fmjax.metrics import METRICS, SpeechScorer, speaker_classifier_accuracy  # noqa: E402
from train.corpus_experiment import eval_pairs  # noqa: E402


def alignment_labels(corpus) -> dict[str, np.ndarray] | None:
    """Phone-state labels per utterance id from ``alignment.npz``, or None if the corpus has none."""
    path = corpus.root / "alignment.npz"
    if not path.is_file():
        return None
    labels = np.load(path)["labels"]
    out, first = {}, 0
    for rec in corpus.meta["utterances"]:
        out[rec["id"]] = labels[first : first + rec["tokens"]].astype(np.int64)
        first += rec["tokens"]
    return out


def log_mel_pair_kmeans(corpus, vocab: int, n_iter: int) -> dict[str, np.ndarray]:
    """Tokens of the old design: k-means on standardised pairs of log-mel frames (no speaker normalisation)."""
    train = np.concatenate([pair_frames(u.mel) for u in corpus.train]).astype(np.float64)
    mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-5)
    c, _ = fit_kmeans(((train - mean) / std).astype(np.float32), vocab, jax.random.key(0), n_iter)
    c = np.asarray(c, np.float64)
    out = {}
    for u in corpus.train + corpus.valid:
        x = (pair_frames(u.mel).astype(np.float64) - mean) / std
        out[u.id] = np.argmin((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None], axis=1)
    return out


def speaker_identity(corpus, n_iter: int = 50) -> dict[str, float]:
    utts = corpus.train + corpus.valid
    spk = [u.speaker_index for u in utts]
    v = corpus.vocab_size

    def acc(tokens: dict) -> float:
        return speaker_classifier_accuracy([tokens[u.id] for u in utts], spk, v)

    rows = {"corpus tokens": acc({u.id: u.tokens for u in utts})}
    labels = alignment_labels(corpus)
    if labels is not None:
        rows["phone-state labels (the content's floor)"] = acc(labels)
    km, _ = SpeechTokenizer.fit([u.mel for u in corpus.train], [u.speaker for u in corpus.train], v,
                                jax.random.key(0), n_iter=n_iter)
    rows["k-means, speaker-normalised cepstra c0..c19"] = acc({u.id: km.encode(u.mel, u.speaker) for u in utts})
    rows["k-means, standardised log-mel frame pairs (old design)"] = acc(log_mel_pair_kmeans(corpus, v, n_iter))
    rows["chance"] = 1.0 / len(corpus.speakers)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=None, help="corpus directory (default: the shipped one)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    corpus = load_corpus(args.corpus)
    report = {"speaker_identity": speaker_identity(corpus)}
    print("| tokens | speaker accuracy (LOO) |\n|---|---|")
    for name, a in report["speaker_identity"].items():
        print(f"| {name} | {a:.3f} |")
    scorer = SpeechScorer(corpus)
    sets = {"validation (32)": list(corpus.valid), "main job's 8": [t for t, _ in eval_pairs(corpus, 8)]}
    for title, utts in sets.items():
        scores = scorer.reference_scores(utts)
        report[title] = scores
        print(f"\n{title}\n\n| | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS))
        for name, s in scores.items():
            print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in METRICS) + " |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
