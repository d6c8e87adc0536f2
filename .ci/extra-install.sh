#!/usr/bin/env bash
# Extra CI installs that a pyproject extra cannot express. Called by .ci/run inside the CI venv, after
# `pip install -e ".[dev,torch,notebooks]"` (the torch extra brings einops, conformer, diffusers and
# huggingface_hub, the imports of Matcha's decoder module).
#
# matcha-tts: the reference for the Matcha/CosyVoice1 U-Net parity tests (tests/models/test_unet_torch.py).
# Installed without its requirement list (gradio, lightning, hydra, ...): the tests import only
# matcha.models.components.decoder. It is an sdist whose setup.py cythonizes a small extension, so pip
# builds it once (build deps cython 0.29.35 / numpy 1.24.3 in an isolated env, needs a C compiler; about
# 20 s) and reuses the cached wheel afterwards.
set -euo pipefail
python -m pip install -q --no-deps "matcha-tts==0.0.7.2"
# Fail here, loudly, rather than letting the parity tests skip: the decoder module must import.
python -c "import matcha.models.components.decoder" 2>/dev/null || {
  echo "extra-install: matcha.models.components.decoder does not import; the torch extra must provide" \
       "einops, conformer==0.3.2, diffusers==0.29.0 and huggingface_hub==0.25.2" >&2
  python -c "import matcha.models.components.decoder"
  exit 1
}
