import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from conformer_asr.data.manifest import DataIssues, load_cuts, save_jsonl
from conformer_asr.data.manifest_errors import ManifestError
from conformer_asr.inference.evaluate import read_manifest


def _tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _write_lines(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """tmp/wavs/{a.wav, b.flac}, tmp/elsewhere/c.wav."""
    (tmp_path / "wavs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    sf.write(tmp_path / "wavs" / "a.wav", _tone(0.5), 16000)
    sf.write(tmp_path / "wavs" / "b.flac", _tone(0.25), 16000)
    sf.write(tmp_path / "elsewhere" / "c.wav", _tone(0.3), 16000)
    return tmp_path


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audio file in a folder that does not contain the manifests."""
    path = tmp_path_factory.mktemp("outside") / "d.wav"
    sf.write(path, _tone(0.3), 16000)
    return path


def test_plain_round_trip_keeps_lines_and_extras(corpus, outside):
    records = [
        {"id": "a", "audio": "wavs/a.wav", "text": "hello world", "voice": "slt",
         "duration": 0.5, "source": "tts", "licence": "CC0"},
        {"id": "b", "audio": "wavs/b.flac", "text": "good bye", "speaker": "ann"},
        {"id": "d", "audio": str(outside), "text": "far away"},
    ]
    manifest = _write_lines(corpus / "in.jsonl", records)
    cuts = load_cuts(manifest)
    assert [c.id for c in cuts] == ["a", "b", "d"]
    a = cuts["a"]
    assert a.duration == pytest.approx(0.5) and a.sampling_rate == 16000
    assert a.supervisions[0].speaker == "slt" and cuts["b"].supervisions[0].speaker == "ann"
    assert a.load_audio().shape == (1, 8000)
    save_jsonl(cuts, corpus / "out.jsonl")
    assert _lines(corpus / "out.jsonl") == records


def test_paths_resolve_against_manifest_folder(corpus, monkeypatch):
    sub = corpus / "lists"
    sub.mkdir()
    manifest = _write_lines(sub / "m.jsonl", [
        {"id": "a", "audio": "../wavs/a.wav", "text": "hi"},
        {"id": "c", "audio": str(corpus / "elsewhere" / "c.wav"), "text": "there"},
    ])
    monkeypatch.chdir(corpus / "elsewhere")
    cuts = load_cuts(manifest)
    assert cuts["a"].recording.sources[0].source == str(corpus / "wavs" / "a.wav")
    save_jsonl(cuts, sub / "again.jsonl")  # a.wav is outside lists/: written absolute
    assert [r["audio"] for r in _lines(sub / "again.jsonl")] == [
        str(corpus / "wavs" / "a.wav"), str(corpus / "elsewhere" / "c.wav")]
    save_jsonl(cuts, corpus / "top.jsonl")  # now both lie under the folder: relative
    assert [r["audio"] for r in _lines(corpus / "top.jsonl")] == ["wavs/a.wav", "elsewhere/c.wav"]


def test_a_windows_editors_manifest_reads_like_any_other(corpus):
    """A byte-order mark, CRLF line ends and blank lines, for training and for evaluate."""
    records = [{"id": "a", "audio": "wavs/a.wav", "text": "hi"},
               {"id": "b", "audio": "wavs/b.flac", "text": "there"}]
    plain = _write_lines(corpus / "plain.jsonl", records)
    windows = corpus / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n\r\n"))
    assert [c.to_dict() for c in load_cuts(windows)] == [c.to_dict() for c in load_cuts(plain)]
    assert read_manifest(windows) == read_manifest(plain)


def test_text_is_normalised(corpus):
    manifest = _write_lines(corpus / "m.jsonl", [
        {"id": "a", "audio": "wavs/a.wav", "text": "Hello, WORLD! It's  café-time."}])
    assert load_cuts(manifest)["a"].supervisions[0].text == "hello world it's cafe time"


def test_a_bad_file_met_again_is_counted_again_and_shown_once():
    """Training meets a bad file every epoch (and in each DDP process): the summary said
    "NaN or infinite samples: 3 (e.g. x, x, x)"."""
    issues, other = DataIssues(), DataIssues()
    for example in ["x", "x", "y"]:
        issues.add("bad", example)
    for example in ["y", "z"]:
        other.add("bad", example)
    issues.merge(other)
    assert issues.summary() == "bad: 5 (e.g. x, y, z)"


def test_each_bad_data_kind_is_counted_and_skipped(corpus):
    (corpus / "wavs" / "broken.wav").write_bytes(b"RIFF not really audio")
    sf.write(corpus / "wavs" / "empty.wav", np.zeros(0), 16000)
    manifest = _write_lines(corpus / "m.jsonl", [
        {"id": "a", "audio": "wavs/a.wav", "text": "kept"},
        {"id": "a", "audio": "wavs/b.flac", "text": "same id again"},
        {"id": "m1", "audio": "wavs/gone.wav", "text": "missing"},
        {"id": "m2", "audio": "wavs/lost.flac", "text": "missing too"},
        {"id": "u", "audio": "wavs/broken.wav", "text": "unreadable"},
        {"id": "z", "audio": "wavs/empty.wav", "text": "zero length"},
        {"id": "t", "audio": "wavs/b.flac", "text": " ?! "},
        "{not json",
        {"id": "k", "audio": "wavs/b.flac"},
        {"id": "b", "audio": "wavs/b.flac", "text": "also kept"},
    ])
    issues = DataIssues()
    cuts = load_cuts(manifest, issues)
    assert [c.id for c in cuts] == ["a", "b"]
    assert issues.counts == {"duplicate id": 1, "missing audio": 2, "unreadable audio": 1,
                             "empty audio": 1, "empty text": 1, "malformed line": 2}
    assert issues.examples["missing audio"] == ["wavs/gone.wav", "wavs/lost.flac"]
    assert issues.examples["malformed line"] == ["m.jsonl:8", "m.jsonl:9"]
    assert issues.total == 8
    assert "missing audio: 2 (e.g. wavs/gone.wav, wavs/lost.flac)" in issues.summary().splitlines()


def test_other_rates_are_resampled_and_channels_kept(corpus):
    sf.write(corpus / "wavs" / "cd.wav", _tone(0.5, rate=22050), 22050)
    sf.write(corpus / "wavs" / "stereo.wav", _tone(0.5, channels=2), 16000)
    manifest = _write_lines(corpus / "m.jsonl", [
        {"id": "cd", "audio": "wavs/cd.wav", "text": "resampled"},
        {"id": "st", "audio": "wavs/stereo.wav", "text": "two channels"},
    ])
    cuts = load_cuts(manifest)
    assert cuts["cd"].sampling_rate == 16000
    assert cuts["cd"].load_audio().shape == (1, 8000)
    assert cuts["st"].load_audio().shape == (2, 8000)
    save_jsonl(cuts, corpus / "out.jsonl")
    assert [r["audio"] for r in _lines(corpus / "out.jsonl")] == ["wavs/cd.wav", "wavs/stereo.wav"]


@pytest.mark.parametrize("name", ["cuts.jsonl.gz", "cuts.jsonl"])
def test_lhotse_cuts_manifest_accepted(corpus, name):
    plain = _write_lines(corpus / "m.jsonl", [
        {"id": "a", "audio": "wavs/a.wav", "text": "one", "speaker": "x"},
        {"id": "b", "audio": "wavs/b.flac", "text": "two"},
        {"id": "c", "audio": str(corpus / "elsewhere" / "c.wav"), "text": "three"},
    ])
    cuts = load_cuts(plain)
    upper = cuts.modify_ids(str.upper).map_supervisions(lambda s: s.transform_text(str.upper))
    (corpus / "elsewhere" / "c.wav").unlink()
    (cuts + upper + cuts.subset(cut_ids=["a"])).to_file(corpus / name)
    issues = DataIssues()
    loaded = load_cuts(corpus / name, issues)
    assert [c.id for c in loaded] == ["a", "b", "A", "B"]
    assert loaded["A"].supervisions[0].text == "one"
    assert loaded["A"].supervisions[0].speaker == "x"
    assert issues.counts == {"missing audio": 2, "duplicate id": 1}
    assert loaded["b"].load_audio().shape == (1, 4000)


def test_unknown_or_missing_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_cuts(tmp_path / "nope.jsonl")
    _write_lines(tmp_path / "odd.jsonl", [{"path": "x.wav", "words": "hi"}])
    with pytest.raises(ManifestError, match="neither a plain manifest"):
        load_cuts(tmp_path / "odd.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    assert len(load_cuts(tmp_path / "empty.jsonl")) == 0
    sf.write(tmp_path / "a.wav", _tone(0.1), 16000)
    _write_lines(tmp_path / "bad_start.jsonl",
                 ["{oops", {"id": "a", "audio": "a.wav", "text": "fine"}])
    issues = DataIssues()
    assert [c.id for c in load_cuts(tmp_path / "bad_start.jsonl", issues)] == ["a"]
    assert issues.counts == {"malformed line": 1}


def test_save_is_atomic(corpus):
    cuts = load_cuts(_write_lines(corpus / "m.jsonl", [
        {"id": "a", "audio": "wavs/a.wav", "text": "one"},
        {"id": "b", "audio": "wavs/b.flac", "text": "two"}]))
    out = corpus / "out.jsonl"
    save_jsonl(cuts, out)
    before = out.read_text()
    partial = CutSet.from_cuts([cuts["a"], cuts["b"].truncate(duration=0.1, preserve_id=True)])
    with pytest.raises(ManifestError, match="cut b: not a whole single audio file"):
        save_jsonl(partial, out)
    assert out.read_text() == before
    assert sorted(p.name for p in corpus.iterdir() if p.name.startswith(".")) == []


def test_data_issues_cap_merge_and_summary():
    first, second = DataIssues(), DataIssues()
    for i in range(7):
        first.add("missing audio", f"{i}.wav")
    second.add("missing audio", "x.wav")
    second.add("empty text", "u1")
    first.merge(second)
    assert first.counts == {"missing audio": 8, "empty text": 1}
    assert first.examples["missing audio"] == [f"{i}.wav" for i in range(5)]
    assert first.total == 9
    assert first.summary() == ("missing audio: 8 (e.g. 0.wav, 1.wav, 2.wav, 3.wav, 4.wav)\n"
                               "empty text: 1 (e.g. u1)")
    assert DataIssues().total == 0 and DataIssues().summary() == ""


def test_speaker_zero_is_a_speaker(corpus):
    """Numeric speaker ids: 0 was read as no speaker, and left out of evaluate's breakdown."""
    manifest = _write_lines(corpus / "numbered.jsonl", [
        {"id": "a", "audio": "wavs/a.wav", "text": "hi", "speaker": 0},
        {"id": "b", "audio": "wavs/b.flac", "text": "there", "voice": 1},
        {"id": "c", "audio": "wavs/a.wav", "text": "you", "speaker": None}])
    assert [u.speaker for u in read_manifest(manifest)] == ["0", "1", ""]
