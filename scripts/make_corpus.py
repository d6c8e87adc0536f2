"""Synthesises the shipped speech corpus (``data/corpus``) with espeak-ng. Deterministic.

    apt-get install -y espeak-ng          # Debian package; only this script needs it, not the tests or CI
    python scripts/make_corpus.py [--out data/corpus] [--per-speaker 40]

1. Sentences: ``per_speaker x len(SPEAKERS)`` distinct short English sentences drawn from the small grammar
   below with ``numpy.random.RandomState(seed)`` (legacy generator: its stream is frozen). The grammar and
   its word lists were written for fmjax and are dedicated to the public domain (CC0).
2. Speech: each speaker (an espeak-ng American-English voice variant, pitch and speed) reads its own sentences.
   ``scripts/espeak_events.py`` runs espeak-ng's library in a fresh process per utterance -- the samples are
   those of ``espeak-ng -v VOICE -p PITCH -s SPEED -w out.wav TEXT`` -- and also returns the start sample of
   every phoneme. 16-bit 22.05 kHz; silence after the last sample above -60 dBFS is cut to 100 ms.
3. Phone states: each 25-Hz token gets the phone at its centre, split into left-to-right states, 256 states in
   all (:mod:`fmjax.data.phone_states`). These are the training targets of the tokenizer; they are written to
   ``alignment.npz`` for analysis (nothing at training or generation time reads them).
4. Corpus: :func:`fmjax.data.prepare.prepare_corpus` resamples to 24 kHz, computes the CosyVoice2 log-mels,
   splits 4 utterances per speaker into validation, fits the speaker-normalised tokenizer's MLP head to the
   training phone states (:mod:`fmjax.data.tokenizer`), tokenises every utterance with it and keeps the
   validation audio as FLAC.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmjax import audio  # noqa: E402
from fmjax.data.phone_states import PhoneStates, token_phones  # noqa: E402
from fmjax.data.prepare import prepare_corpus  # noqa: E402

# name: (espeak-ng voice+variant, pitch 0-99, speed in words per minute). One accent (American English), so that
# the speakers differ in voice, pitch and tempo but not in their phone inventory: the phone-state tokens are then
# nearly speaker-independent (with eight accents the phone states alone identify half of the speakers; README).
SPEAKERS = {
    "us_m3": ("en-us+m3", 45, 165),
    "us_f2": ("en-us+f2", 62, 160),
    "us_m1": ("en-us+m1", 35, 172),
    "us_f4": ("en-us+f4", 70, 155),
    "us_m5": ("en-us+m5", 50, 175),
    "us_f3": ("en-us+f3", 80, 150),
    "us_m7": ("en-us+m7", 25, 180),
    "us_f1": ("en-us+f1", 55, 165),
}
ESPEAK_RATE = 22050
WORKER = pathlib.Path(__file__).resolve().parent / "espeak_events.py"

NOUNS = ("cat", "dog", "bird", "horse", "girl", "farmer", "sailor", "teacher", "baker", "doctor", "boy", "goat",
         "painter", "driver", "singer", "student", "neighbour", "king", "queen", "clerk", "miner", "pilot")
THINGS = ("lamp", "book", "chair", "coat", "basket", "letter", "ladder", "kettle", "bottle", "ribbon", "hammer",
          "candle", "wagon", "blanket", "mirror", "whistle", "bucket", "violin", "carpet", "pencil", "rope", "stone")
ADJS = ("old", "young", "quiet", "noisy", "bright", "dark", "small", "large", "happy", "tired", "clever", "brave",
        "gentle", "busy", "lazy", "proud", "green", "yellow", "heavy", "narrow", "warm", "cold", "strange", "simple")
PLACES = ("market", "river", "garden", "station", "kitchen", "village", "harbour", "forest", "library", "bridge",
          "valley", "school", "hill", "field", "shop", "castle", "barn", "island", "mountain", "square")
VERBS_PAST = ("walked", "ran", "waited", "slept", "sang", "danced", "worked", "played", "rested", "hid")
VERBS_MOVE = ("walked", "ran", "drove", "hurried", "rode", "wandered", "cycled", "raced")
VERBS_OBJ = ("found", "carried", "painted", "sold", "bought", "dropped", "cleaned", "mended", "lost", "opened",
             "wrapped", "borrowed")
VERBS_BASE = ("bring", "take", "carry", "open", "clean", "mend", "find", "paint", "hide", "fetch", "move", "check")
PREPS = ("near", "behind", "beside", "inside", "across", "under", "past", "around")
TIMES = ("this morning", "last night", "at noon", "on Monday", "in the spring", "before dinner", "after school",
         "every evening", "at dawn", "in the winter", "on Sunday", "yesterday")
ADVS = ("slowly", "quickly", "quietly", "loudly", "carefully", "gladly", "often", "rarely", "suddenly", "softly")
NAMES = ("Anna", "Ben", "Clara", "David", "Ella", "Frank", "Grace", "Henry", "Iris", "Jack", "Lena", "Martin",
         "Nora", "Oscar", "Paula", "Sam", "Tom", "Vera", "Walter", "Zoe")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")
WEATHER = (("wind", "blew"), ("rain", "fell"), ("snow", "fell"), ("sun", "shone"), ("fog", "lifted"),
           ("storm", "passed"))

TEMPLATES = (
    "The {adj} {noun} {verb_past} {prep} the {place}.",
    "{name} {verb_obj} a {adj} {thing} {time}.",
    "Please {verb_base} the {thing} to the {place}.",
    "Why did the {noun} {verb_base} the {thing} so {adv}?",
    "We saw {number} {adj} {noun}s {prep} the {place}.",
    "{Time}, the {weather} {weather_verb} {adv} over the {place}.",
    "A {adj} {thing} is lying {prep} the {place}.",
    "{name} and {name2} {verb_past} {adv} {time}.",
    "Did you {verb_base} my {adj} {thing} {time}?",
    "The {noun} said the {thing} was too {adj}.",
    "There are {number} {thing}s in the {adj} {place}.",
    "{name} {verb_move} to the {place} {adv}.",
    "Nobody knew why the {thing} was so {adj}.",
    "The {place} looks {adj} when the {weather} comes.",
)


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences from the grammar, in a fixed order for a given seed."""
    rng = np.random.RandomState(seed)

    def pick(words):
        return words[rng.randint(len(words))]

    out, seen = [], set()
    while len(out) < n:
        weather, weather_verb = WEATHER[rng.randint(len(WEATHER))]
        name = pick(NAMES)
        fields = dict(adj=pick(ADJS), noun=pick(NOUNS), thing=pick(THINGS), place=pick(PLACES),
                      verb_past=pick(VERBS_PAST), verb_move=pick(VERBS_MOVE), verb_obj=pick(VERBS_OBJ),
                      verb_base=pick(VERBS_BASE),
                      prep=pick(PREPS), time=pick(TIMES), adv=pick(ADVS), name=name,
                      name2=pick(tuple(x for x in NAMES if x != name)), number=pick(NUMBERS),
                      weather=weather, weather_verb=weather_verb)
        fields["Time"] = fields["time"][0].upper() + fields["time"][1:]
        text = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", pick(TEMPLATES).format(**fields))  # a old -> an old
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("  Data at")[0].strip()


def synthesise(text: str, voice: str, pitch: int, speed: int, path: pathlib.Path) -> list[tuple[int, str]]:
    """espeak-ng -> wav (trailing silence below -60 dBFS cut to 100 ms); returns the ``(start sample, phoneme)``
    events."""
    out = subprocess.run([sys.executable, str(WORKER), voice, str(pitch), str(speed), str(path)], input=text,
                         capture_output=True, text=True, check=True).stdout
    wav, sr = audio.load_wav(path)
    if sr != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz, expected {ESPEAK_RATE} Hz")
    loud = np.flatnonzero(np.abs(wav) > 1e-3)
    end = min(wav.size, (loud[-1] + 1 if loud.size else 0) + sr // 10)
    audio.save_wav(path, wav[:end], sr)
    return [(int(a), str(p)) for a, p in json.loads(out)]


def n_tokens(path: pathlib.Path, config: audio.MelConfig = audio.MelConfig()) -> int:
    """Tokens of a wav as :func:`~fmjax.data.prepare.prepare_corpus` will count them (24-kHz frames // 2)."""
    wav, _ = audio.load_wav(path, config.sample_rate, resample_to_sr=True)
    return audio.num_frames(wav.size, config) // 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "data" / "corpus"))
    p.add_argument("--per-speaker", type=int, default=40)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier-steps", type=int, default=1000)
    args = p.parse_args(argv)
    texts = sentences(args.per_speaker * len(SPEAKERS), args.seed)
    phones = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for s, (name, (voice, pitch, speed)) in enumerate(SPEAKERS.items()):
            (tmp / name).mkdir()
            for k in range(args.per_speaker):
                text, uid = texts[s * args.per_speaker + k], f"{name}/{k:03d}"
                events = synthesise(text, voice, pitch, speed, tmp / f"{uid}.wav")
                (tmp / f"{uid}.txt").write_text(text + "\n")
                phones[uid] = token_phones([a for a, _ in events], [q for _, q in events], ESPEAK_RATE,
                                           n_tokens(tmp / f"{uid}.wav"))
        states = PhoneStates.fit(list(phones.values()), args.vocab)
        labels = {uid: states.labels(seq) for uid, seq in phones.items()}

        def token_labels(uid: str, n: int) -> np.ndarray:
            if labels[uid].shape != (n,):
                raise RuntimeError(f"{uid}: {labels[uid].shape[0]} phone labels for {n} tokens")
            return labels[uid]

        source = {"tool": espeak_version(), "script": "scripts/make_corpus.py", "seed": args.seed,
                  "speakers": {n: {"voice": v, "pitch": p_, "speed_wpm": s_} for n, (v, p_, s_) in SPEAKERS.items()},
                  "alignment": "espeak-ng phoneme events -> alignment.npz (fmjax.data.phone_states)",
                  "text_licence": "CC0 (generated by scripts/make_corpus.py)"}
        index = prepare_corpus(tmp, args.out, fit_vocab=args.vocab, token_labels=token_labels,
                               classifier_steps=args.classifier_steps, valid_per_speaker=4, seed=args.seed,
                               keep_wavs="valid", source=source)
    order = [u["id"] for u in index["utterances"]]
    np.savez_compressed(pathlib.Path(args.out) / "alignment.npz", phones=np.array(states.phones),
                        states=np.array(states.states, np.int16),
                        labels=np.concatenate([labels[uid] for uid in order]).astype(np.int16))
    n_valid = sum(u["split"] == "valid" for u in index["utterances"])
    frames = sum(u["frames"] for u in index["utterances"])
    print(f"{len(index['utterances'])} utterances ({n_valid} valid), {len(index['speakers'])} speakers, "
          f"{frames / 50 / 60:.1f} min, vocab {index['vocab_size']}, {len(states.phones)} phones, tokenizer loss "
          f"{index['tokenizer']['loss_first']:.2f} -> {index['tokenizer']['loss_last']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
