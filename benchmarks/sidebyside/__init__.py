"""The PyTorch side of the side-by-side benchmarks: CosyVoice2's original modules, built from a user's checkout.

Benchmark-only code: nothing in fmjax or its tests imports it, and the originals are imported from the user's
checkout at run time (never vendored). Install (into the fmjax environment; torch stays at 2.13.0)::

    pip install -e ".[torch]" omegaconf       # torch, einops, conformer, diffusers==0.29.0 (+ omegaconf for flow.py)
    git clone https://github.com/FunAudioLLM/CosyVoice && git -C CosyVoice submodule update --init

Check the wiring (small sizes; ``--full`` adds the full-size key/shape and one-forward checks)::

    python benchmarks/sidebyside/check.py --cosyvoice /path/to/CosyVoice [--full]

Use (from a script under ``benchmarks/``)::

    from sidebyside import build, procedures as proc
    from sidebyside.originals import load_originals
    from timing import interleaved, print_sidebyside, sidebyside_row

    orig = load_originals(path)                          # Matcha-TTS at <path>/third_party/Matcha-TTS
    est, sd = build.build_estimator(orig, size="full")   # sd -> fmjax.convert.causal_unet.convert_causal_unet(sd, preset="cosyvoice2")
    inp = proc.estimator_inputs(2, 500)                  # torch layout (B, C, T); fmjax takes (B, T, C)
    res = interleaved({"torch": proc.estimator_call(est, inp), "fmjax": run_fmjax}, rounds=5)
    rows = [sidebyside_row("estimator T=500", res, diff=max_abs_diff)]

Modules: :mod:`.originals` (imports), :mod:`.build` (configs and builders), :mod:`.procedures` (what is timed),
:mod:`.check` (the checks).
"""
