"""The asr data build end to end on three sentences: espeak-ng speaks them, noise is added, PocketSphinx
recognises them, and the recipe's files come out with every field the judge and eval read."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhfkit.data.formats import read_records
from rlhfkit.data.speech import add_noise, normalise, transcription_prompt

ROOT = Path(__file__).resolve().parents[2]
missing = [p for p in ("espeak-ng", "flite", "sox") if shutil.which(p) is None]
try:
    import pocketsphinx  # noqa: F401
except ImportError:
    missing.append("pocketsphinx")
needs_speech = pytest.mark.skipif(bool(missing), reason=f"the speech build needs {', '.join(missing)} "
                                                        "(apt-get install espeak-ng flite sox; pip install -e '.[speech]')")


def test_normalise_keeps_words_and_apostrophes_only():
    assert normalise("Hello, I'm calling — about Order #452!") == "hello i'm calling about order 452"


def test_noise_is_added_at_the_asked_signal_to_noise_ratio():
    rng = np.random.default_rng(0)
    speech = (8000 * np.sin(np.linspace(0, 2000, 32000))).astype(np.int16)
    noisy = add_noise(speech, 20.0, rng)
    noise = noisy.astype(float) - speech
    snr = 10 * np.log10(np.mean(speech.astype(float) ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(20.0, abs=0.3)


def test_a_prompt_shows_the_context_and_the_hypotheses_best_first():
    text = transcription_prompt({"kind": "call", "nbest": [{"text": "for five to"}, {"text": ""}, {"text": "a"},
                                                           {"text": "b"}, {"text": "c"}]})
    assert "a customer-service call" in text and "1. for five to\n2. (nothing heard)\n3. a\n4. b\n" in text
    assert "5. c" not in text


@needs_speech
def test_the_build_script_turns_three_sentences_into_recipe_files(tmp_path):
    out = tmp_path / "asr"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_asr_data.py"), "--out", str(out), "--n", "3",
                    "--eval", "1", "--sft", "1", "--keep-audio", "1"], check=True, capture_output=True, text=True)
    utterances = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert len(utterances) == 3 and len({u["reference"] for u in utterances}) == 3
    for u in utterances:
        assert u["reference"] == normalise(u["reference"]) and u["seconds"] > 0.5
        assert u["nbest"][0]["text"] == u["one_best"] and len({h["text"] for h in u["nbest"]}) == len(u["nbest"])
        assert isinstance(u["nbest"][0]["score"], float)
    assert any(u["one_best"] for u in utterances)  # the recogniser heard words, not silence
    ev, prompts = read_records(out / "eval.jsonl", "prompt"), read_records(out / "prompts.jsonl", "prompt")
    sft = read_records(out / "sft.jsonl", "sft")
    assert (len(ev), len(prompts), len(sft)) == (1, 1, 1)
    said = {u["reference"] for u in utterances}
    assert {ev[0]["reference"], prompts[0]["reference"], sft[0]["completion"]} == said  # each sentence in one file
    assert "Its best guesses" in ev[0]["prompt"] and ev[0]["nbest"]
    clip = out / "audio" / ev[0]["audio"]
    assert clip.stat().st_size > 16000  # 16 kHz 16-bit: half a second at least
    build = json.loads((out / "build.json").read_text())
    assert 0.0 <= build["oracle_nbest"]["wer"] <= build["recogniser_one_best"]["wer"]
