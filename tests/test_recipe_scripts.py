"""The recipes' helper scripts: recipes/asterisk/prepare.py on a fake copy of Debian's
Asterisk prompts, recipes/synthetic/narrowband.py on the test clips,
recipes/synthetic/dev_unseen.py on a fake corpus's dev manifest."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_asr.data.synth.voices import DEV_UNSEEN_VOICES, all_voices, missing_engines

RECIPES = Path(__file__).parents[1] / "recipes"
DATA = Path(__file__).parent / "data"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, timeout=60)


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return _run(RECIPES / "asterisk" / "prepare.py", *args)


def test_usable_prompts_become_a_manifest(tmp_path):
    sounds, transcripts = tmp_path / "sounds", tmp_path / "core-sounds-en.txt.gz"
    (sounds / "digits").mkdir(parents=True)
    (sounds / "letters").mkdir()
    for name in ["activated", "digits/mon-10", "beep", "conf-adminmenu", "letters/x",
                 "agent-pass"]:
        sf.write(sounds / f"{name}.wav", np.zeros(800, np.int16), 8000)
    with gzip.open(transcripts, "wt") as out:
        out.write("; Core Asterisk Sounds in English\n\nactivated: Activated.\n"
                  "digits/mon-10: November\nbeep: [this is a simple beep tone]\n"
                  "conf-adminmenu: Please press 1 to mute.\nletters/x: X\n"
                  "no-recording: Goodbye.\nagent-pass: Please enter your password: now.\n")
    manifest = tmp_path / "out" / "asterisk.jsonl"
    result = _prepare("--out", str(manifest), "--sounds", str(sounds), "--transcripts",
                      str(transcripts))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"3 prompts -> {manifest}\n"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["id"], r["text"], r["audio"]) for r in records] == [
        ("activated", "Activated.", str(sounds / "activated.wav")),
        ("digits/mon-10", "November", str(sounds / "digits" / "mon-10.wav")),
        ("agent-pass", "Please enter your password: now.", str(sounds / "agent-pass.wav"))]
    result = _prepare("--out", str(manifest), "--sounds", str(tmp_path / "gone"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f"{tmp_path / 'gone'}: not found (apt-get install asterisk-core-sounds-en-wav)")


def test_narrowband_copies_keep_the_records_at_the_new_rate(tmp_path):
    out = tmp_path / "nb"
    result = _run(RECIPES / "synthetic" / "narrowband.py", "--manifest",
                  str(DATA / "manifest.jsonl"), "--out", str(out), "--limit", "3")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    originals = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == [r["text"] for r in originals[:3]]
    for record, original in zip(records, originals, strict=False):
        info = sf.info(out / record["audio"])
        assert info.samplerate == 8000
        assert info.duration == pytest.approx(sf.info(DATA / original["audio"]).duration,
                                              abs=1e-3)


@pytest.mark.skipif(bool(missing_engines()), reason="TTS engines missing")
def test_dev_unseen_speaks_dev_sentences_with_new_voices(tmp_path):
    corpus, out = tmp_path / "synth", tmp_path / "dev_unseen"
    corpus.mkdir()
    dev = [{"id": f"synth0-{i:07d}", "audio": f"audio/dev/synth0-{i:07d}.flac", "text": text,
            "voice": "flite-slt", "engine": "flite"}
           for i, text in enumerate(["dressed well or smartly", "a small dog", "it rained"])]
    (corpus / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    result = _run(RECIPES / "synthetic" / "dev_unseen.py", "--corpus", str(corpus), "--out",
                  str(out), "--limit", "2")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == [r["text"] for r in dev[:2]]
    inventory = {voice.id for voice in all_voices()}
    for record in records:
        assert record["voice"] not in inventory
        assert record["voice"] in {voice.id for voice in DEV_UNSEEN_VOICES}
        info = sf.info(out / record["audio"])
        assert info.samplerate == 16000
        assert info.duration == pytest.approx(record["duration"], abs=1e-3)
    result = _run(RECIPES / "synthetic" / "dev_unseen.py", "--corpus", str(tmp_path / "gone"),
                  "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f"{tmp_path / 'gone' / 'dev.jsonl'}: No such file or directory")
