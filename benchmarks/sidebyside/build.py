"""Builds CosyVoice2's estimator, flow and HiFT in torch (the original classes) with seeded random weights.

    est, sd = build_estimator(orig, size="full", seed=0)   # decoder.estimator (CausalConditionalDecoder)
    flow, sd = build_flow(orig, size="full", seed=0)       # CausalMaskedDiffWithXvec (encoder + CFM + estimator)
    hift, sd = build_hift(orig, size="full", seed=0)       # HiFTGenerator (24 kHz, SineGen2)

``sd`` is the module's state dict as ``{torch name: float32 numpy array}``, exactly what ``fmjax.convert``
reads (``convert_flow(sd, preset="cosyvoice2")``, ``convert_causal_unet(sd, preset="cosyvoice2")``, ``convert_hift(sd, preset="cosyvoice2")``); for ``size="small"`` pass
``static_chunk_size=5, decoder_heads=4`` (flow) or ``num_heads=4, chunk_size=10`` (estimator).

Sizes. ``"full"``: CosyVoice2 as ``examples/libritts/cosyvoice2/conf/cosyvoice2.yaml`` (at ace7c47) configures it,
also tabulated in the reference SPEC (``shared/reference/cosyvoice2/SPEC.md`` §1, §2, §4, §5, §6). ``"small"``:
the reference fixtures' configuration (``shared/reference/cosyvoice2/README.md``, "Small configuration"), the
same classes at smaller widths; its state dict has the key set and shapes of ``flow_small_state_dict.npz`` /
``hift_small_state_dict.npz``.

Weights (the reference harness's recipe, README "Weights"): each class's own random init under
``torch.manual_seed(seed)``, then every per-channel parameter (biases, LayerNorm affines, weight-norm ``g``,
the rel-pos biases ``pos_bias_u/v``) gets ``+ 0.1·N(0, 1)`` from a generator seeded with ``seed``, so that a
port that drops one is caught (the estimator's init would otherwise zero every bias). HiFT's
``f0_predictor.classifier`` is then rescaled so that f0 on a random mel spans about 0-265 Hz (the reference
did the same), i.e. some frames voiced, some not.
"""

from __future__ import annotations

import numpy as np
import torch

SIZES = ("full", "small")

# ---------------------------------------------------------------------------------------------- configurations
# Each value: cosyvoice2.yaml (= SPEC) for "full"; reference README "Small configuration" for "small".
FLOW = {
    "full": dict(input_size=512, output_size=80, spk_embed_dim=192, output_type="mel", vocab_size=6561,
                 input_frame_rate=25, only_mask_loss=True, token_mel_ratio=2, pre_lookahead_len=3),  # yaml flow:
    "small": dict(input_size=64, output_size=80, spk_embed_dim=192, output_type="mel", vocab_size=100,
                  input_frame_rate=25, only_mask_loss=True, token_mel_ratio=2, pre_lookahead_len=3),
}
ENCODER = {  # yaml flow.encoder (UpsampleConformerEncoder); SPEC §2
    "full": dict(input_size=512, output_size=512, attention_heads=8, linear_units=2048, num_blocks=6,
                 dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1, normalize_before=True,
                 input_layer="linear", pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn",
                 use_cnn_module=False, macaron_style=False, static_chunk_size=25),  # yaml chunk_size: 25 tokens
    "small": dict(input_size=64, output_size=64, attention_heads=2, linear_units=128, num_blocks=2,
                  dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1, normalize_before=True,
                  input_layer="linear", pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn",
                  use_cnn_module=False, macaron_style=False, static_chunk_size=5),
}
CFM_PARAMS = dict(sigma_min=1e-06, solver="euler", t_scheduler="cosine", training_cfg_rate=0.2,  # yaml cfm_params
                  inference_cfg_rate=0.7, reg_loss_type="l1")                                    # (same in both)
CFM = dict(in_channels=240, n_spks=1, spk_emb_dim=80)  # yaml flow.decoder (CausalConditionalCFM); SPEC §5
ESTIMATOR = {  # yaml flow.decoder.estimator (CausalConditionalDecoder); SPEC §4
    "full": dict(in_channels=320, out_channels=80, channels=[256], dropout=0.0, attention_head_dim=64, n_blocks=4,
                 num_mid_blocks=12, num_heads=8, act_fn="gelu",
                 static_chunk_size=50,            # yaml: chunk_size * token_mel_ratio = 25 * 2
                 num_decoding_left_chunks=-1),    # yaml num_decoding_left_chunks (HEAD ignores it anyway)
    "small": dict(in_channels=320, out_channels=80, channels=[64], dropout=0.0, attention_head_dim=32, n_blocks=1,
                  num_mid_blocks=2, num_heads=4, act_fn="gelu", static_chunk_size=10, num_decoding_left_chunks=-1),
}
HIFT = {  # yaml hift (HiFTGenerator); SPEC §6
    "full": dict(in_channels=80, base_channels=512, nb_harmonics=8, sampling_rate=24000, nsf_alpha=0.1,
                 nsf_sigma=0.003, nsf_voiced_threshold=10, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
                 istft_params={"n_fft": 16, "hop_len": 4}, resblock_kernel_sizes=[3, 7, 11],
                 resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], source_resblock_kernel_sizes=[7, 7, 11],
                 source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], lrelu_slope=0.1, audio_limit=0.99),
}
HIFT["small"] = {**HIFT["full"], "base_channels": 32}
F0_PREDICTOR = {"full": dict(num_class=1, in_channels=80, cond_channels=512),  # yaml hift.f0_predictor
                "small": dict(num_class=1, in_channels=80, cond_channels=32)}
F0_TOP_HZ = 265.0  # reference README: the classifier rescaled so that f0 covers about 2-265 Hz


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """``{name: float32 numpy array}`` of the module's state dict (copies, detached)."""
    return {k: v.detach().cpu().float().numpy().copy() for k, v in module.state_dict().items()}


def _per_channel(name: str, p: torch.Tensor) -> bool:
    return p.ndim == 1 or name.endswith(("pos_bias_u", "pos_bias_v")) or name.endswith(".original0")


@torch.no_grad()
def perturb_per_channel(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Adds ``scale·N(0, 1)`` (generator seeded ``seed``, state-dict order) to every per-channel parameter."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if _per_channel(name, p):
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _estimator(orig, size: str):
    return orig.CausalConditionalDecoder(**ESTIMATOR[size])


def build_estimator(orig, *, size: str = "full", seed: int = 0):
    """``(CausalConditionalDecoder in eval mode, its numpy state dict)``; 71,302,480 params at full size."""
    _check_size(size)
    torch.manual_seed(seed)
    est = _estimator(orig, size)
    perturb_per_channel(est, seed)
    est.eval()
    return est, state_dict_numpy(est)


def build_flow(orig, *, size: str = "full", seed: int = 0):
    """``(CausalMaskedDiffWithXvec in eval mode, its numpy state dict)``; 112,549,360 params, 1121 tensors at full.

    At ``"small"`` the encoder's hard-coded 512-wide ``pre_lookahead_layer`` and ``up_layer`` are replaced after
    construction by the same classes at the encoder width, as the reference fixtures did (SPEC §10 item 14).
    Constructing ``CausalConditionalCFM`` reseeds every global RNG with 0 and draws its fixed noise
    ``rand_noise`` (SPEC §5.1); that noise is therefore ``torch.manual_seed(0); torch.randn(1, 80, 15000)``
    whatever ``seed`` is.
    """
    _check_size(size)
    torch.manual_seed(seed)
    estimator = _estimator(orig, size)
    encoder = orig.UpsampleConformerEncoder(**ENCODER[size])
    if size == "small":
        width = ENCODER[size]["output_size"]
        layers = orig.mods["cosyvoice.transformer.upsample_encoder"]
        encoder.pre_lookahead_layer = layers.PreLookaheadLayer(in_channels=width, channels=width, pre_lookahead_len=3)
        encoder.up_layer = layers.Upsample1D(width, width, stride=2)
    decoder = orig.CausalConditionalCFM(cfm_params=orig.mods["omegaconf"].DictConfig(CFM_PARAMS), estimator=estimator,
                                        **CFM)
    torch.manual_seed(seed + 1)  # the CFM reseeded with 0; the remaining layers draw from our seed again
    flow = orig.CausalMaskedDiffWithXvec(encoder=encoder, decoder=decoder, **FLOW[size])
    perturb_per_channel(flow, seed)
    flow.eval()
    return flow, state_dict_numpy(flow)


@torch.no_grad()
def build_hift(orig, *, size: str = "full", seed: int = 0, probe_frames: int = 50):
    """``(HiFTGenerator in eval mode, its numpy state dict)``; 20,821,295 params, 328 tensors at full size.

    The f0 classifier is scaled so that the largest f0 over a random ``probe_frames``-frame mel is F0_TOP_HZ.
    """
    _check_size(size)
    torch.manual_seed(seed)
    f0 = orig.ConvRNNF0Predictor(**F0_PREDICTOR[size])
    hift = orig.HiFTGenerator(f0_predictor=f0, **HIFT[size])
    perturb_per_channel(hift, seed)
    hift.eval()
    mel = torch.randn(1, HIFT[size]["in_channels"], probe_frames, generator=torch.Generator().manual_seed(seed))
    top = float(hift.f0_predictor(mel).max())
    if top > 0:
        hift.f0_predictor.classifier.weight.mul_(F0_TOP_HZ / top)
        hift.f0_predictor.classifier.bias.mul_(F0_TOP_HZ / top)
    return hift, state_dict_numpy(hift)


def load_numpy_state(module: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Loads ``{name: array}`` into ``module`` (strict: every key, every shape); returns the module."""
    module.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    return module


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
