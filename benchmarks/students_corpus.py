"""Few-step students against their teacher on the corpus (issue 14, item 4): quality against NFE, mean ± std over
seeds, with the training cost of each model.

    python benchmarks/students_corpus.py --teacher T --reflow R0,R1 --meanflow M0,M1 [--noise-seeds 0,1]
        [--sentences 32] [--teacher-nfes 1,2,10] [--student-nfes 1,2] [--name students_corpus]

``T`` is a token2mel trainer workdir (or flow checkpoint), ``R*`` reflow students of it (``train/configs/reflow.py``)
and ``M*`` MeanFlow students (``train/configs/meanflow.py``), one per training seed. Every model generates the
first ``--sentences`` validation sentences of the shipped corpus (round-robin over speakers, each with a same-speaker
training prompt, as the trainer's evaluation) with noise ``jax.random.key(seed)`` for every noise seed, and is scored
by :class:`fmjax.metrics.SpeechScorer` (mel L1, MCD, TER, speaker accuracy/cosine, Fréchet distance, V/UV, F0 RMSE).

Samplers: the teacher with CosyVoice's (cosine grid, Euler, CFG 0.7: two estimator rows per step), the reflow
students on the same grid without CFG (guidance is in their couplings), the MeanFlow students with the ``meanflow``
solver on the linear grid without CFG (guidance folded into training). Mean ± std (ddof 1) over training seeds x
noise seeds (the teacher: noise seeds). The speaker-mean baseline, the lookup decoder and the ground-truth ceilings
of the same sentences are printed with them. Training cost: steps and, for runs wrapped in ``/usr/bin/time -v``
with the output in ``<workdir>.log``, CPU and wall seconds (the reflow students' include generating the couplings).

Writes ``benchmarks/results/<name>.json`` and ``<name>.png`` (the quality-vs-NFE plot of notebook 03 and the README).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import RESULTS, print_table, write_json  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 0, got {text!r}")
    return values


def _paths(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="token2mel workdir or flow checkpoint (required)")
    ap.add_argument("--reflow", type=_paths, default=(), help="comma-separated reflow student workdirs (default: none)")
    ap.add_argument("--meanflow", type=_paths, default=(), help="comma-separated MeanFlow student workdirs "
                                                                "(default: none)")
    ap.add_argument("--noise-seeds", type=_ints, default=(0, 1), help="noise seeds (default: 0,1)")
    ap.add_argument("--sentences", type=int, default=32, help="validation sentences (default: 32, all)")
    ap.add_argument("--teacher-nfes", type=_ints, default=(1, 2, 10), help="teacher NFEs (default: 1,2,10)")
    ap.add_argument("--student-nfes", type=_ints, default=(1, 2), help="student NFEs (default: 1,2)")
    ap.add_argument("--name", default="students_corpus", help="results name (default: students_corpus)")
    args = ap.parse_args()

    from train.config import apply_overrides
    from train.configs import token2mel
    from train.experiments import build
    from train.students import Entry, evaluate, plot_quality_vs_nfe, references, summarise, training_cost

    exp = build(apply_overrides(token2mel.get_config("tiny"), [f"data.eval_sentences={args.sentences}"]))
    entries = [Entry("teacher (CFG 0.7)", (args.teacher,), args.teacher_nfes, "cosine", "euler", 0.7)]
    if args.reflow:
        entries.append(Entry("reflow student", args.reflow, args.student_nfes, "cosine", "euler", 0.0))
    if args.meanflow:
        entries.append(Entry("MeanFlow student", args.meanflow, args.student_nfes, "linear", "meanflow", 0.0))
    rows = evaluate(exp, entries, args.noise_seeds)
    summary = summarise(rows)
    refs = references(rows)
    costs = [dict(training_cost(p), label=e.label) for e in entries for p in e.paths]
    table = [{"model": r["label"], "NFE": r["nfe"], "n": r["n"],
              **{k: f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}" for k in ("mel_l1", "mcd", "ter", "spk_cos")
                 if f"{k}_mean" in r}} for r in summary]
    table += [{"model": name, **{k: f"{v:.4f}" for k, v in vals.items() if k in ("mel_l1", "mcd", "ter", "spk_cos")}}
              for name, vals in refs.items()]
    print_table(table, ["model", "NFE", "n", "mel_l1", "mcd", "ter", "spk_cos"],
                title=f"{args.sentences} validation sentences; mean ± std over training x noise seeds "
                      f"{list(args.noise_seeds)}")
    print_table(costs, ["label", "path", "steps", "cpu_s", "wall_s"], title="training cost")
    teacher10 = next((r for r in summary if r["label"].startswith("teacher") and r["nfe"] == max(args.teacher_nfes)),
                     None)
    verdicts = []
    for r in summary:
        if teacher10 and not r["label"].startswith("teacher") and r["nfe"] == 2:
            for k in ("mel_l1", "ter"):
                if f"{k}_mean" in r:
                    gap = r[f"{k}_mean"] - teacher10[f"{k}_mean"]
                    ok = gap <= teacher10[f"{k}_std"]
                    verdicts.append(f"{r['label']} NFE 2 vs teacher NFE {teacher10['nfe']} on {k}: "
                                    f"{r[f'{k}_mean']:.4f} vs {teacher10[f'{k}_mean']:.4f} ± "
                                    f"{teacher10[f'{k}_std']:.4f}: {'within' if ok else 'NOT within'} one std")
    print("\n".join(verdicts))
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{args.name}.png"
    plot_quality_vs_nfe(summary, png, references={k: refs[k] for k in ("speaker mean", "lookup")})
    print(f"wrote {png}")
    write_json(args.name, {"sentences": args.sentences, "noise_seeds": list(args.noise_seeds),
                           "entries": [vars(e) | {"paths": list(e.paths)} for e in entries], "summary": summary,
                           "references": refs, "costs": costs, "verdicts": verdicts, "rows": rows})


if __name__ == "__main__":
    main()
