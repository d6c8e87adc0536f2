"""What the corpus-experiment tests share: a test-size CosyVoice2 flow and a micro corpus cut from the shipped one."""

from __future__ import annotations

from fmjax.data.corpus import load_corpus, save_corpus
from train.configs import token2mel

# A flow small enough to compile in seconds, over the corpus's 256-token vocabulary and 192-d speaker vectors.
SMALL_FLOW = token2mel._flow(d=32, heads=2, ff=64, blocks=1, up_blocks=1, channels=32, est_blocks=1, mid=1,
                             est_heads=2, head_dim=16)


def micro_corpus(root, n_train: int = 6, n_valid: int = 1):
    """Two speakers of the shipped corpus, their first ``n_train`` training and ``n_valid`` validation utterances
    cut to 12..20 tokens, written as a corpus at ``root`` (returned)."""
    c = load_corpus(None)
    records, mels, tokens = [], [], []
    for s in range(2):
        for split, utts, n in (("train", c.train, n_train), ("valid", c.valid, n_valid)):
            for i, u in enumerate([u for u in utts if u.speaker_index == s][:n]):
                k = 12 + (3 * i + s) % 9
                records.append({"id": u.id, "speaker": u.speaker, "text": u.text, "split": split})
                mels.append(u.mel[: 2 * k])
                tokens.append(u.tokens[:k])
    save_corpus(root, config=c.config, vocab_size=c.vocab_size,
                speakers={c.speakers[s]: c.spk_embeddings[s] for s in range(2)}, records=records, mels=mels,
                tokens=tokens)
    return root


def micro_teacher(root):
    """A token2mel "teacher" workdir at ``root`` for the student experiments' tests: the tiny preset's config with
    :data:`SMALL_FLOW` and one checkpoint of random parameters (key 0). Returns ``(root, params)``."""
    import dataclasses

    import jax
    import optax

    from fmjax.models.flow import CosyVoice2Flow, init_flow_params
    from train.checkpoint import Checkpointer
    from train.config import config_to_dict, write_config
    from train.state import make_state

    cfg = token2mel.get_config("tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, flow=SMALL_FLOW))
    write_config(cfg, root / "config.json")
    params = jax.jit(lambda k: init_flow_params(CosyVoice2Flow(SMALL_FLOW), k))(jax.random.key(0))
    ckpt = Checkpointer(root / "checkpoints", 1)
    ckpt.save(make_state(params, optax.sgd(0.1)), position=0, config=config_to_dict(cfg))
    ckpt.close()
    return root, params
