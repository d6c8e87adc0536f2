"""Synthesises the shipped speech corpus (``data/corpus``) with espeak-ng. Deterministic.

    apt-get install -y espeak-ng          # Debian package; only this script needs it, not the tests or CI
    python scripts/make_corpus.py [--out data/corpus] [--per-speaker 40]

1. Sentences: ``per_speaker x len(SPEAKERS)`` distinct short English sentences drawn from the small grammar
   below with ``numpy.random.RandomState(seed)`` (legacy generator: its stream is frozen). The grammar and
   its word lists were written for fmjax and are dedicated to the public domain (CC0).
2. Speech: each speaker (an espeak-ng voice + variant, pitch and speed) reads its own sentences; espeak-ng
   writes 16-bit 22.05 kHz wavs. Silence after the last sample above -60 dBFS is cut to 100 ms.
3. Corpus: :func:`fmjax.data.prepare.prepare_corpus` resamples to 24 kHz, computes the CosyVoice2 log-mels,
   splits 4 utterances per speaker into validation, fits a 256-centroid k-means tokenizer on the training
   frame pairs and keeps the validation audio as FLAC.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmjax import audio  # noqa: E402
from fmjax.data.prepare import prepare_corpus  # noqa: E402

# name: (espeak-ng voice+variant, pitch 0-99, speed in words per minute)
SPEAKERS = {
    "us_m3": ("en-us+m3", 45, 165),
    "us_f2": ("en-us+f2", 62, 160),
    "rp_m1": ("en-gb-x-rp+m1", 35, 172),
    "scot_f4": ("en-gb-scotland+f4", 70, 155),
    "carib_m5": ("en-029+m5", 50, 175),
    "gb_f3": ("en-gb+f3", 80, 150),
    "nyc_m7": ("en-us-nyc+m7", 25, 180),
    "wmid_f1": ("en-gb-x-gbcwmd+f1", 55, 165),
}

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


def synthesise(text: str, voice: str, pitch: int, speed: int, path: pathlib.Path) -> None:
    """espeak-ng -> wav, then trailing silence (below -60 dBFS) cut to 100 ms."""
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    wav, sr = audio.load_wav(path)
    loud = np.flatnonzero(np.abs(wav) > 1e-3)
    end = min(wav.size, (loud[-1] + 1 if loud.size else 0) + sr // 10)
    audio.save_wav(path, wav[:end], sr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "data" / "corpus"))
    p.add_argument("--per-speaker", type=int, default=40)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    texts = sentences(args.per_speaker * len(SPEAKERS), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for s, (name, (voice, pitch, speed)) in enumerate(SPEAKERS.items()):
            (tmp / name).mkdir()
            for k in range(args.per_speaker):
                text = texts[s * args.per_speaker + k]
                synthesise(text, voice, pitch, speed, tmp / name / f"{k:03d}.wav")
                (tmp / name / f"{k:03d}.txt").write_text(text + "\n")
        source = {"tool": espeak_version(), "script": "scripts/make_corpus.py", "seed": args.seed,
                  "speakers": {n: {"voice": v, "pitch": p_, "speed_wpm": s_} for n, (v, p_, s_) in SPEAKERS.items()},
                  "text_licence": "CC0 (generated by scripts/make_corpus.py)"}
        index = prepare_corpus(tmp, args.out, fit_vocab=args.vocab, kmeans_iters=100, valid_per_speaker=4,
                               seed=args.seed, keep_wavs="valid", source=source)
    n_valid = sum(u["split"] == "valid" for u in index["utterances"])
    frames = sum(u["frames"] for u in index["utterances"])
    print(f"{len(index['utterances'])} utterances ({n_valid} valid), {len(index['speakers'])} speakers, "
          f"{frames / 50 / 60:.1f} min, vocab {index['vocab_size']}, k-means objective "
          f"{index['tokenizer']['objective_first']:.2f} -> {index['tokenizer']['objective_last']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
