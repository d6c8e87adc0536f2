"""Matcha-TTS / CosyVoice1 U-Net vs the real ``matcha-tts`` ``Decoder`` (random weights), and the converter.

The torch reference is Matcha's own module (``matcha.models.components.decoder.Decoder``). CosyVoice1's
``ConditionalDecoder`` has the same module tree and differs only in the forward pass: it packs
``[x | mu | spks | prompt]`` (reproduced here by handing Matcha ``mu' = [mu | spks | prompt]``), builds a
different attention mask (swapped in by a pre-hook on each transformer block) and crops each upsampled
sequence to its skip (a hook on the upsampling convs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.common import StateDictError, count_parameters
from fmjax.convert.unet import convert_unet
from fmjax.models.unet import ConditionalDecoder, UNetConfig

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:.*LoRACompatibleLinear:FutureWarning")]
torch = pytest.importorskip("torch")
decoder_module = pytest.importorskip("matcha.models.components.decoder")

MEL, SPK, PROMPT = 8, 4, 8


def matcha_decoder(channels, act_fn, spk=SPK, prompt=PROMPT, n_blocks=2, num_mid_blocks=2, seed=0):
    """Matcha's ``Decoder`` (its own init), with every 1-D parameter (biases, norm scales, snake-beta's
    alpha/beta) moved by N(0, 0.1²) so that a dropped or swapped one shows in the output."""
    torch.manual_seed(seed)
    dec = decoder_module.Decoder(
        in_channels=2 * MEL + spk + prompt, out_channels=MEL, channels=channels, dropout=0.0, attention_head_dim=8,
        n_blocks=n_blocks, num_mid_blocks=num_mid_blocks, num_heads=2, act_fn=act_fn,
    ).eval()
    with torch.no_grad():
        for p in dec.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return dec


def inputs(t, lengths=None, spk=SPK, prompt=PROMPT, seed=1):
    """Torch inputs (channel-first) for batch 2 with ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    b = 2
    lengths = lengths or (t, t - 5)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()[:, None]  # (B, 1, T)
    return {"x": torch.randn(b, MEL, t, generator=g), "mu": torch.randn(b, MEL, t, generator=g),
            "spks": torch.randn(b, spk, generator=g), "prompt": torch.randn(b, prompt, t, generator=g),
            "mask": mask, "t": torch.rand(b, generator=g)}


def torch_forward(dec, a, native_spks=False):
    """Matcha's forward; ``native_spks`` passes spks through Matcha's own ``spks`` argument (no prompt),
    otherwise ``mu' = [mu | spks | prompt]`` gives CosyVoice's packing."""
    with torch.no_grad():
        if native_spks:
            return dec(a["x"], a["mask"], a["mu"], a["t"], spks=a["spks"]).numpy()
        b, _, t = a["mu"].shape
        packed = torch.cat([a["mu"], a["spks"][:, :, None].expand(b, -1, t), a["prompt"]], dim=1)
        return dec(a["x"], a["mask"], packed, a["t"]).numpy()


def fmjax_forward(cfg, params, a, native_spks=False):
    def tl(v):  # (B, C, T) -> [b, t, c]
        return jnp.asarray(v.numpy().transpose(0, 2, 1))

    prompt = None if native_spks else tl(a["prompt"])
    cond = MelCond(tl(a["mu"]), jnp.asarray(a["spks"].numpy()), prompt, jnp.asarray(a["mask"][:, 0].numpy()))
    v, _ = jax.jit(ConditionalDecoder(cfg).apply)(params, tl(a["x"]), cond, jnp.asarray(a["t"].numpy()))
    return np.asarray(v).transpose(0, 2, 1)  # (B, M, T)


def convert(dec, prompt=PROMPT, **kw):
    sd = {k: v.numpy() for k, v in dec.state_dict().items()}
    return convert_unet(sd, num_heads=2, cond_dim=prompt, **kw)


@pytest.mark.parametrize(
    "act_fn,channels,n_blocks,t", [("snakebeta", (32,), 2, 12), ("gelu", (32,), 2, 12), ("snakebeta", (16, 32), 1, 16)]
)
def test_unet_matches_matcha(act_fn, channels, n_blocks, t):
    dec = matcha_decoder(channels, act_fn, n_blocks=n_blocks)
    cfg, params = convert(dec)
    assert (cfg.channels, cfg.activation, cfg.n_blocks, cfg.num_mid_blocks) == (channels, act_fn, n_blocks, 2)
    assert (cfg.spk_dim, cfg.cond_dim, cfg.attention_mask, cfg.crop_upsampled) == (SPK, PROMPT, "additive_keys", False)
    a = inputs(t)
    np.testing.assert_allclose(fmjax_forward(cfg, params, a), torch_forward(dec, a), rtol=0, atol=1e-4)


def test_unet_matches_matcha_speaker_argument():
    """Matcha's own multi-speaker path (``spks`` argument, no prompt)."""
    dec = matcha_decoder((16,), "snakebeta", prompt=0, n_blocks=1, num_mid_blocks=1)
    cfg, params = convert(dec, prompt=0)
    assert (cfg.spk_dim, cfg.cond_dim) == (SPK, 0)
    a = inputs(16)
    np.testing.assert_allclose(
        fmjax_forward(cfg, params, a, native_spks=True), torch_forward(dec, a, native_spks=True), rtol=0, atol=1e-4
    )


def _cosyvoice_hooks(dec, mode, t):
    """Hooks that turn Matcha's forward into CosyVoice's: the attention mask each transformer block gets, and
    (``key_padding``, CosyVoice at HEAD) the crop of each upsampled sequence to its skip's length."""

    def swap_mask(module, args, kwargs):
        m = kwargs["attention_mask"]  # (B, T) float
        if mode == "key_padding":  # mask_to_bias(padding mask repeated over queries)
            bias = (1.0 - m[:, None, :].expand(-1, m.shape[1], -1)) * -1.0e10
        else:  # the July 2024 release: the float outer product, added as is
            bias = m[:, :, None] * m[:, None, :]
        return args, {**kwargs, "attention_mask": bias}

    handles = [blk.register_forward_pre_hook(swap_mask, with_kwargs=True)
               for stage in (*dec.down_blocks, *dec.mid_blocks, *dec.up_blocks) for blk in stage[1]]
    if mode == "key_padding":
        lengths = [t]
        for _ in dec.down_blocks:
            lengths.append(-(-lengths[-1] // 2))
        for i, stage in enumerate(dec.up_blocks[:-1]):
            target = lengths[len(dec.up_blocks) - 2 - i]
            handles.append(stage[2].register_forward_hook(lambda mod, args, out, n=target: out[..., :n]))
    return handles


@pytest.mark.parametrize(
    "mode,channels,n_blocks,t", [("key_padding", (16, 16, 32), 1, 13), ("additive_pairs", (32,), 2, 12)]
)
def test_unet_matches_cosyvoice1(mode, channels, n_blocks, t):
    """CosyVoice at HEAD (with an odd length: crops at two levels) and as released (July 2024; it differs from
    Matcha only from a stage's second transformer block on, whose keys include the padded rows)."""
    dec = matcha_decoder(channels, "gelu", n_blocks=n_blocks)
    crop = mode == "key_padding"
    cfg, params = convert(dec, attention_mask=mode, crop_upsampled=crop)
    a = inputs(t)
    handles = _cosyvoice_hooks(dec, mode, t)
    try:
        expected = torch_forward(dec, a)
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(fmjax_forward(cfg, params, a), expected, rtol=0, atol=1e-4)
    if not crop:  # the masks matter: Matcha's forward on the same weights gives other valid frames
        assert np.abs(torch_forward(dec, a) - expected)[1, :, : t - 5].max() > 1e-3


def test_convert_full_size_configs():
    """Matcha's LJSpeech decoder and CosyVoice-300M's estimator: configs and parameter counts (no forward)."""
    for cfg_expected, kwargs, dec_kwargs in [
        (UNetConfig(), {"num_heads": 2}, dict(in_channels=160, channels=(256, 256), act_fn="snakebeta",
                                              n_blocks=1, num_mid_blocks=2, num_heads=2)),
        (UNetConfig.cosyvoice1(), {"num_heads": 8, "cond_dim": 80, "attention_mask": "key_padding",
                                   "crop_upsampled": True},
         dict(in_channels=320, channels=(256, 256), act_fn="gelu", n_blocks=4, num_mid_blocks=12, num_heads=8)),
    ]:
        dec = decoder_module.Decoder(out_channels=80, attention_head_dim=64, dropout=0.0, **dec_kwargs)
        sd = {"decoder.estimator." + k: v.detach().numpy() for k, v in dec.state_dict().items()}
        sd["encoder.proj.weight"] = np.zeros((3, 3), np.float32)  # a whole checkpoint: other prefixes are ignored
        cfg, params = convert_unet(sd, **kwargs)
        assert cfg == cfg_expected
        assert count_parameters(params) == sum(p.numel() for p in dec.parameters())
        x = jnp.zeros((1, 8, 80))
        cond = MelCond(x, jnp.zeros((1, cfg.spk_dim)), jnp.zeros((1, 8, cfg.cond_dim)), jnp.ones((1, 8)))
        shapes = jax.eval_shape(ConditionalDecoder(cfg).init, jax.random.key(0), x, cond, jnp.zeros(1))
        assert jax.tree_util.tree_map(np.shape, shapes) == jax.tree_util.tree_map(np.shape, params)


def test_convert_errors():
    dec = matcha_decoder((16, 32), "snakebeta", n_blocks=1, num_mid_blocks=1)
    sd = {k: v.numpy() for k, v in dec.state_dict().items()}
    broken = dict(sd)
    del broken["mid_blocks.0.1.0.ff.net.0.beta"]
    broken["up_blocks.0.2.conv.weight"] = np.zeros((32, 32, 4), np.float32)
    broken["up_blocks.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(StateDictError) as err:
        convert_unet(broken, num_heads=2, cond_dim=PROMPT)
    msg = str(err.value)
    assert "missing keys (1): mid_blocks.0.1.0.ff.net.0.beta" in msg
    assert "up_blocks.0.2.conv.weight: expected shape (16, 16, 4), got (32, 32, 4)" in msg
    assert "unexpected keys (1): up_blocks.0.extra.weight" in msg
    with pytest.raises(StateDictError, match="cannot infer its sizes.*final_proj.weight"):
        convert_unet({k: v for k, v in sd.items() if k != "final_proj.weight"}, num_heads=2)
    with pytest.raises(ValueError, match="num_heads: attention width 16 is not divisible by num_heads=3"):
        convert_unet(sd, num_heads=3)
    with pytest.raises(ValueError, match="cond_dim"):
        convert_unet(sd, num_heads=2, cond_dim=40)
