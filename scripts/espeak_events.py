"""Worker: one espeak-ng utterance in a fresh process (the library keeps state between utterances), with the
start sample of every phoneme. Standard library only, so that a process starts in a few ms.

    python scripts/espeak_events.py VOICE PITCH SPEED OUT.wav < text      # prints [[sample, phoneme], ...]
"""

import ctypes
import json
import sys
import wave

_PHONEME_EVENTS, _DONT_EXIT = 0x0001, 0x8000
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_AUTO, _ENDPAUSE = 2, 1, 0, 0x1000
_EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7
_RATE, _PITCH = 1, 3


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Voice(ctypes.Structure):  # espeak_VOICE of speak_lib.h
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


def main(voice: str, pitch: int, speed: int, out: str, text: str) -> int:
    lib = ctypes.CDLL("libespeak-ng.so.1")
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS | _DONT_EXIT)
    if rate <= 0:
        raise SystemExit("espeak-ng: initialisation failed")
    samples, events = [], []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
    def callback(wav, n, ev):
        if n > 0:
            samples.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while ev[i].type != _EVENT_END_OF_LIST:
            if ev[i].type == _EVENT_PHONEME:
                events.append([ev[i].sample, ev[i].id.string.decode()])
            i += 1
        return 0

    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:  # as the espeak-ng CLI: then a language[+variant]
        select = _Voice(languages=voice.encode())
        if lib.espeak_SetVoiceByProperties(ctypes.byref(select)) != 0:
            raise SystemExit(f"espeak-ng: unknown voice {voice!r}")
    lib.espeak_SetParameter(_RATE, speed, 0)
    lib.espeak_SetParameter(_PITCH, pitch, 0)
    data = text.encode()
    lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_AUTO | _ENDPAUSE, None, None)
    lib.espeak_Synchronize()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(b"".join(samples))
    json.dump(events, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.stdin.read()))
