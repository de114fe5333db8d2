"""Speech for the asr recipe: synthesise a sentence, add noise, recognise it, keep what the recogniser heard.

The pieces are real and offline: Debian's ``espeak-ng`` or ``flite`` speaks the sentence (a voice, a rate and, for
espeak-ng, a pitch per utterance), ``sox`` turns it into 16 kHz mono 16-bit audio, white noise is added at a signal-to-noise ratio, and
PocketSphinx (the PyPI package ``pocketsphinx``, whose wheel ships its US-English acoustic model, language
model and dictionary) decodes it into a 1-best hypothesis and an N-best list with scores. Nothing is fetched.

A record (one utterance): ``id``, ``kind`` (the sentence's kind of speech), ``reference`` (what was said,
normalised: see :func:`normalise`), ``one_best``, ``nbest`` (distinct hypotheses, best first, each
``{"text", "score"}``), ``voice`` (``engine:name``), ``stretch`` (speaking time against the voice's own rate),
``pitch`` (espeak-ng), ``snr_db``, ``seconds`` (the audio's
length) and, for the clips kept, ``audio`` (the WAV file's name beside the records).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# Two synthesisers, several voices each: espeak-ng's formant voices (+f*/+m* variants change the formants) and
# Flite's (CMU's; diphone and clustergen voices). PocketSphinx hears Flite's voices far better (clean: WER
# 0.07-0.20 against espeak-ng's 0.67-0.75 on 12 sentences), so the mix and the noise set how hard the task is.
VOICES = [("espeak-ng", "en-us"), ("espeak-ng", "en-us+f3"), ("espeak-ng", "en-us+m3"), ("espeak-ng", "en-gb"),
          ("flite", "kal16"), ("flite", "rms"), ("flite", "awb"), ("flite", "slt")]
RATES = (0.88, 1.15)  # speaking time relative to the voice's own rate (espeak-ng's 170 words a minute), uniform
PITCHES = (35, 65)  # espeak-ng's 0-99 pitch, uniform (Flite's voices keep their own)
SNR_DB = (15.0, 40.0)  # signal-to-noise ratio of the added white noise, uniform


class SpeechToolMissing(RuntimeError):
    """A program or package the speech build needs is not installed."""


def normalise(text: str) -> str:
    """Lower case, words only (apostrophes kept): how references and hypotheses are compared."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("’", "'")).split())


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SpeechToolMissing(f"{program}: not found; the asr data build needs Debian's espeak-ng, flite and sox "
                                f"(apt-get install espeak-ng flite sox)")
    return path


@dataclass
class Voice:
    engine: str  # espeak-ng | flite
    name: str
    stretch: float  # speaking time relative to the voice's own rate
    pitch: int
    snr_db: float

    @staticmethod
    def draw(rng: random.Random) -> "Voice":
        engine, name = rng.choice(VOICES)
        return Voice(engine, name, round(rng.uniform(*RATES), 2), rng.randint(*PITCHES), round(rng.uniform(*SNR_DB), 1))


def synthesise(text: str, voice: Voice) -> np.ndarray:
    """``text`` spoken by ``voice`` as 16 kHz mono int16 samples (no noise yet)."""
    sox = need("sox")
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = Path(tmp) / "raw.wav", Path(tmp) / "16k.wav"
        if voice.engine == "flite":
            cmd = [need("flite"), "-voice", voice.name, "--setf", f"duration_stretch={voice.stretch}", "-t", text, "-o", str(raw)]
        else:
            cmd = [need("espeak-ng"), "-v", voice.name, "-s", str(round(170 / voice.stretch)), "-p", str(voice.pitch),
                   "-w", str(raw), text]
        subprocess.run(cmd, check=True, capture_output=True)
        subprocess.run([sox, str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav)], check=True,
                       capture_output=True)
        return read_wav(wav)


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the speech's power (silence excluded), clipped to int16."""
    x = samples.astype(np.float64)
    voiced = x[np.abs(x) > 0.01 * max(np.abs(x).max(), 1.0)]
    power = float(np.mean(voiced ** 2)) if voiced.size else 0.0
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=x.shape)
    return np.clip(x + noise, -32768, 32767).astype(np.int16)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz mono 16-bit audio, got {w.getframerate()} Hz, "
                             f"{w.getnchannels()} channels, {8 * w.getsampwidth()}-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype(np.int16).tobytes())


@lru_cache(maxsize=1)
def decoder():
    """PocketSphinx with the US-English model its wheel ships (created once: loading it takes ~1 s)."""
    try:
        from pocketsphinx import Decoder
    except ImportError as e:
        raise SpeechToolMissing("pocketsphinx: not installed; pip install 'rlhfkit[speech]'") from e
    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def recognise(samples: np.ndarray, n: int = 5, scan: int = 200) -> tuple[str, list[dict]]:
    """(the 1-best hypothesis, up to ``n`` distinct hypotheses best first with their scores), normalised.

    The decoder's N-best iterator walks its lattice and repeats a text that differs only in fillers or
    timing; ``scan`` paths at most are read to find ``n`` distinct texts.
    """
    d = decoder()
    d.start_utt()
    d.process_raw(samples.tobytes(), full_utt=True)
    d.end_utt()
    hyp = d.hyp()
    one_best = normalise(hyp.hypstr) if hyp is not None else ""
    texts: list[dict] = [{"text": one_best, "score": round(float(hyp.score), 6) if hyp is not None else 0.0}]
    seen = {one_best}
    for i, h in enumerate(d.nbest()):
        if len(texts) >= n or i >= scan:
            break
        text = normalise(h.hypstr)
        if text and text not in seen:
            seen.add(text)
            texts.append({"text": text, "score": float(f"{h.score:.6g}")})
    return one_best, texts


def utterance(uid: str, kind: str, sentence: str, rng: random.Random, noise_rng: np.random.Generator,
              n: int = 5, keep: Path | None = None) -> dict:
    """One sentence through TTS, noise and the recogniser: its record (see the module docstring).
    ``keep``: a folder to keep the noisy clip in (as ``<uid>.wav``)."""
    voice = Voice.draw(rng)
    noisy = add_noise(synthesise(sentence, voice), voice.snr_db, noise_rng)
    one_best, nbest = recognise(noisy, n)
    record = {"id": uid, "kind": kind, "reference": normalise(sentence), "one_best": one_best, "nbest": nbest,
              "voice": f"{voice.engine}:{voice.name}", "stretch": voice.stretch,
              **({"pitch": voice.pitch} if voice.engine == "espeak-ng" else {}), "snr_db": voice.snr_db,
              "seconds": round(len(noisy) / SAMPLE_RATE, 2)}
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        write_wav(keep / f"{uid}.wav", noisy)
        record["audio"] = f"{uid}.wav"
    return record


CONTEXTS = {"call": "a customer-service call", "classroom": "a question in a classroom", "note": "a dictated note",
            "numbers": "numbers said aloud", "names": "names, places and dates"}
PROMPT_HYPOTHESES = 4  # the N-best hypotheses a prompt shows (more lengthen every prompt for little)


def transcription_prompt(record: dict, n: int = PROMPT_HYPOTHESES) -> str:
    """The policy's prompt for one utterance: its context and the recogniser's best ``n`` hypotheses."""
    lines = [f"{i}. {h['text'] or '(nothing heard)'}" for i, h in enumerate(record["nbest"][:n], 1)]
    context = CONTEXTS.get(record.get("kind", ""), "speech")
    return (f"A speech recogniser heard {context}. Its best guesses, most likely first:\n" + "\n".join(lines)
            + "\nWrite what the speaker said, as a plain transcript.")


def recipe_record(record: dict) -> dict:
    """A prompt record for the asr recipe: the prompt, and beside it the fields the judge and eval read."""
    return {"prompt": transcription_prompt(record), "reference": record["reference"], "one_best": record["one_best"],
            "nbest": record["nbest"][:PROMPT_HYPOTHESES], "kind": record["kind"], "id": record["id"],
            **({"audio": record["audio"]} if record.get("audio") else {})}
