"""The recipe ablation of the token2mel ``tiny`` preset (issue 12): every tried configuration, its generation
metrics at every evaluation and its cost, in one table.

    python scripts/recipe_ablation.py --root /tmp/recipe --variants base mel_global lr_5e-3
    python scripts/recipe_ablation.py --root /tmp/recipe --report          # docs/recipe_ablation.{json,md} only

A *variant* is a name and a list of ``--set`` overrides of the tiny preset (:data:`VARIANTS`; ``--set`` adds
overrides to every variant of this call, e.g. ``--set train.steps=400``, and ``--name-suffix`` tells such runs
apart). Each one is trained by the main job's own command, ``python -m train --config train/configs/token2mel.py
--preset tiny --workdir ROOT/NAME --no-progress --set ...``, in a subprocess, one at a time; recorded per variant:

* ``user_s``, ``sys_s``: the CPU time of the subprocess and its children (``os.wait4``): the fair cost on a shared
  machine; ``wall_s``; ``load_start`` / ``load_end``: the 1-minute load average before and after;
* every ``eval`` row of its ``metrics.jsonl`` (``val_*``: the model on the 8 evaluation sentences, with the
  speaker-mean, lookup and ground-truth values);
* ``extra``: the final EMA parameters re-scored with other samplers (``--samplers cfg=0.3,steps=10 ...``: CFG
  weight and Euler steps on the cosine grid, CosyVoice's fixed noise) -- sampler settings cost no training; the
  sampler ``mu`` scores the encoder's condition itself read as a mel (no flow, no prompt): where the flow's output
  scores worse than its own condition, the estimator loses what the encoder has learnt;
* ``pass``: the issue-12 acceptance at the last step: (a) ``val_fd`` below both baselines', (b) ``val_ter`` within
  0.05 of the lookup's, (c) ``val_spk_acc >= 0.9``, (d) ``val_mel_l1`` below the speaker mean's and at most 1.5x
  the lookup's.

A finished variant (its ``done.json`` and its record) is not retrained: rerunning the same call only adds what is
missing. Records accumulate in ``ROOT/records.json``; ``docs/recipe_ablation.md`` and ``.json`` are rewritten
from them after every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs"
CONFIG = "train/configs/token2mel.py"
SHOWN = ("mel_l1", "mcd", "ter", "spk_acc", "spk_cos", "fd", "vuv_error", "f0_rmse")

# name -> (what it tests, overrides of the tiny preset)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("the tiny preset before the ablation (buckets (64, 90))", []),
    "mel_global": ("Matcha-TTS's mel normalisation: one mean/std of the training mels", ["model.mel_norm=global"]),
    "mel_per_bin": ("mel normalisation per bin", ["model.mel_norm=per_bin"]),
    "prior1": ("Matcha-TTS's prior loss on the encoder output, weight 1", ["model.prior_weight=1.0"]),
    "centred": ("Grad-TTS's source centred on the condition, x0 = 0.5·z + mu, with the prior loss",
                ["model.flow.source_mu=1.0", "model.flow.source_std=0.5", "model.prior_weight=1.0"]),
    "centred_std1": ("the centred source with unit noise, x0 = z + mu, with the prior loss",
                     ["model.flow.source_mu=1.0", "model.prior_weight=1.0"]),
    "centred_std03": ("the centred source with narrower noise, x0 = 0.3·z + mu, with the prior loss",
                      ["model.flow.source_mu=1.0", "model.flow.source_std=0.3", "model.prior_weight=1.0"]),
    "centred_std03_shift": ("centred_std03 plus a learned per-speaker offset of the condition (mu += Dense(spks))",
                            ["model.flow.source_mu=1.0", "model.flow.source_std=0.3", "model.prior_weight=1.0",
                             "model.flow.speaker_shift=True"]),
    "centred_std01_shift": ("centred_std03_shift with narrower noise still, x0 = 0.1·z + mu",
                            ["model.flow.source_mu=1.0", "model.flow.source_std=0.1", "model.prior_weight=1.0",
                             "model.flow.speaker_shift=True"]),
    "centred_prior3": ("the centred source x0 = 0.5·z + mu with the prior loss at weight 3",
                       ["model.flow.source_mu=1.0", "model.flow.source_std=0.5", "model.prior_weight=3.0"]),
}


def _variant(spec: str) -> tuple[str, str, list[str]]:
    """``name`` from :data:`VARIANTS`, or an ad-hoc ``name=key=value;key=value``."""
    if spec in VARIANTS:
        return spec, VARIANTS[spec][0], list(VARIANTS[spec][1])
    if "=" in spec:
        name, rest = spec.split("=", 1)
        return name, "ad hoc", [x for x in rest.split(";") if x]
    raise SystemExit(f"--variants: unknown variant {spec!r}; known: {', '.join(VARIANTS)} (or name=key=value;...)")


def _load() -> float:
    return float(pathlib.Path("/proc/loadavg").read_text().split()[0])


def _eval_rows(workdir: pathlib.Path) -> list[dict]:
    from train.metrics import read_metrics

    return [{k: v for k, v in r.items() if k == "step" or (k.startswith("val_") and isinstance(v, float))}
            for r in read_metrics(workdir / "metrics.jsonl") if r.get("kind") == "eval"]


def acceptance(row: dict) -> dict[str, bool]:
    """Issue 12's checks (a)-(d) on one eval row."""
    return {
        "a_fd": row["val_fd"] < min(row["val_fd_baseline"], row["val_fd_lookup"]),
        "b_ter": row["val_ter"] <= row["val_ter_lookup"] + 0.05,
        "c_spk": row["val_spk_acc"] >= 0.9,
        "d_l1": row["val_mel_l1"] < row["val_mel_l1_baseline"] and row["val_mel_l1"] <= 1.5 * row["val_mel_l1_lookup"],
    }


def _parse_sampler(text: str) -> dict:
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        out[{"cfg": "cfg_weight", "steps": "n_steps", "grid": "grid"}[k]] = (
            float(v) if k == "cfg" else int(v) if k == "steps" else v)
    return out


def rescore(workdir: pathlib.Path, samplers: list[str]) -> dict[str, dict]:
    """The run's final EMA parameters scored with other sampler settings (no training)."""
    if not samplers:
        return {}
    from fmjax.checkpoint import load_teacher
    from train.config import Config, OptimConfig, TrainConfig
    from train.corpus_experiment import CorpusData
    from train.experiments import build
    from train.experiments.token2mel import ModelConfig
    from fmjax.samplers import SamplerConfig

    loaded = load_teacher(workdir)
    run = loaded.run_config
    model = run["model"]
    mc = ModelConfig(flow=loaded.model.config, **{k: v for k, v in model.items() if k != "flow"})
    data = dict(run["data"])
    data["buckets"] = tuple(data["buckets"])
    data["sampler"] = SamplerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["sampler"].items()})
    cfg = Config("token2mel", mc, CorpusData(**data), OptimConfig(**run["optim"]), TrainConfig(**run["train"]))
    exp = build(cfg)
    out = {}
    for text in samplers:
        if text == "mu":
            mel = condition_mel(exp, loaded.params)
        else:
            mel, _ = exp.generate(loaded.params, **_parse_sampler(text))
        out[text] = exp.score(mel)
    return out


def condition_mel(exp, params):
    """The encoder's condition ``mu [k, F, m]`` of the evaluation sentences (full context, no prompt), in the
    corpus's log-mel units and zero past each row's length: what the flow is conditioned on, scored as a mel."""
    import jax.numpy as jnp
    import numpy as np

    from fmjax.pipelines.common import flow_condition

    inputs = exp.generation_inputs()
    lengths = inputs["lengths"]
    mu = flow_condition(exp.model, params, jnp.asarray(inputs["tokens"]), jnp.asarray(lengths),
                        jnp.asarray(inputs["embedding"], jnp.float32)).mu
    frames = exp.model.config.token_mel_ratio * lengths
    mu = np.asarray(mu) * (np.arange(mu.shape[1])[None, :] < frames[:, None])[..., None]
    return exp.denormalize_mel(mu.astype(np.float32), frames)


def train_variant(name: str, overrides: list[str], root: pathlib.Path, *, python: str) -> dict:
    """Trains one variant by the main job's command; returns its cost record (or the recorded one if done)."""
    workdir = root / name
    cmd = [python, "-m", "train", "--config", CONFIG, "--preset", "tiny", "--workdir", str(workdir), "--no-progress"]
    for o in overrides:
        cmd += ["--set", o]
    load_start, t0 = _load(), time.time()
    log = open(root / f"{name}.log", "a")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    log.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name}: python -m train exited with {code}; see {root / (name + '.log')}")
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime, "wall_s": time.time() - t0, "load_start": load_start,
            "load_end": _load(), "command": " ".join(cmd[1:])}


def write_report(records: dict, out_md: pathlib.Path, out_json: pathlib.Path) -> None:
    """The markdown table (one row per variant and evaluation step) and the JSON of every record."""
    out_json.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    ref = next((r["evals"][-1] for r in records.values() if r.get("evals")), None)
    lines = ["# Recipe ablation of the token2mel tiny preset (issue 12)", "",
             "Written by `scripts/recipe_ablation.py` (every configuration tried, with its cost); the full records,",
             "including every metric's baselines, are in `recipe_ablation.json`. Metrics on the main job's 8",
             "evaluation sentences (`train.corpus_experiment.eval_pairs`; CosyVoice's sampler unless the sampler",
             "column says otherwise). CPU = user + sys seconds of the whole `python -m train` process (import,",
             "compilation, training, evaluations, samples); load = 1-minute load average at start / end.", ""]
    if ref:
        lines += ["| reference | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
        for who, suffix in (("ground truth", "_truth"), ("speaker mean", "_baseline"), ("lookup", "_lookup")):
            vals = [ref.get(f"val_{m}{suffix}", 0.0 if suffix == "_truth" else None) for m in SHOWN]
            lines.append(f"| {who} | " + " | ".join("" if v is None else f"{v:.3g}" for v in vals) + " |")
        lines.append("")
    head = ["variant", "overrides", "step", "sampler"] + list(SHOWN) + ["pass a/b/c/d", "CPU s", "wall s", "load"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in records.items():
        rows = [(e["step"], "default", e) for e in r.get("evals", [])]
        rows += [(r["evals"][-1]["step"], k, v) for k, v in r.get("extra", {}).items()] if r.get("evals") else []
        for step, sampler, e in rows:
            ok = acceptance(e)
            cost = r.get("cost", {})
            cells = [name, "<br>".join(r.get("overrides", [])) or "-", str(step), sampler]
            cells += [f"{e.get('val_' + m, float('nan')):.3g}" for m in SHOWN]
            cells += ["".join("y" if ok[k] else "n" for k in ("a_fd", "b_ter", "c_spk", "d_l1"))]
            if sampler == "default" and step == r["evals"][-1]["step"] and cost:
                cells += [f"{cost['user_s'] + cost['sys_s']:.0f}", f"{cost['wall_s']:.0f}",
                          f"{cost['load_start']:.1f}/{cost['load_end']:.1f}"]
            else:
                cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{n}**: {r['what']}" for n, r in records.items() if r.get("what") and r["what"] != "ad hoc"]
    if notes:
        lines += ["", "Variants:", "", *notes]
    out_md.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="parent directory of the variants' workdirs and records.json")
    ap.add_argument("--variants", nargs="*", default=[], help=f"names ({', '.join(VARIANTS)}) or name=key=v;key=v")
    ap.add_argument("--set", action="append", default=[], help="an override added to every variant of this call")
    ap.add_argument("--samplers", nargs="*", default=[], help="extra samplers scored on each final model, e.g. "
                                                              "cfg=0.3,steps=10, or mu (the encoder's condition)")
    ap.add_argument("--report", action="store_true", help="only rewrite the docs from the records")
    ap.add_argument("--md", default=str(DOCS / "recipe_ablation.md"), help="markdown output")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    store = root / "records.json"
    records = json.loads(store.read_text()) if store.exists() else {}
    md = pathlib.Path(args.md)
    for spec in [] if args.report else args.variants:
        name, what, overrides = _variant(spec)
        overrides += args.set
        rec = records.get(name, {})
        if rec and rec.get("overrides") != overrides:
            raise SystemExit(f"{name}: recorded with {rec.get('overrides')}, asked with {overrides}; rename it")
        rec.update(what=what, overrides=overrides)
        if not (root / name / "done.json").exists() or "cost" not in rec:
            print(f"training {name}: {overrides}", flush=True)
            rec["cost"] = train_variant(name, overrides, root, python=sys.executable)
        rec["evals"] = _eval_rows(root / name)
        missing = [s for s in args.samplers if s not in rec.get("extra", {})]
        rec.setdefault("extra", {}).update(rescore(root / name, missing))
        records[name] = rec
        store.write_text(json.dumps(records, indent=2) + "\n")
        write_report(records, md, md.with_suffix(".json"))
        last = rec["evals"][-1]
        print(f"{name}: step {last['step']} " + " ".join(f"{m}={last['val_' + m]:.3g}" for m in SHOWN)
              + f" cpu={rec['cost']['user_s'] + rec['cost']['sys_s']:.0f}s pass={acceptance(last)}", flush=True)
    write_report(records, md, md.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
