import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_asr.data.corpora import prepare_corpus, prepare_librispeech
from conformer_asr.data.manifest import DataIssues, load_cuts
from conformer_asr.training.config import load_config

RECIPE = Path(__file__).parents[1] / "recipes" / "librispeech"

# part -> speaker -> chapter -> transcripts, in LibriSpeech's upper case
FAKE = {
    "train-clean-100": {
        "19": {"198": ["NORTHANGER ABBEY", "HE'S A GOOD FELLOW"]},
        "26": {"495": ["THE CAT SAT", "ON THE MAT", "AND SLEPT"], "496": ["ONE MORE"]},
    },
    "dev-clean": {"84": {"121123": ["GO DO YOU HEAR"]}},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LibriSpeech/<part>/<spk>/<chapter>/ tree with 0.2-0.4 s synthetic flacs."""
    root = tmp_path_factory.mktemp("corpus") / "LibriSpeech"
    rng = np.random.default_rng(0)
    for part, speakers in FAKE.items():
        for speaker, chapters in speakers.items():
            for chapter, texts in chapters.items():
                folder = root / part / speaker / chapter
                folder.mkdir(parents=True)
                lines = []
                for index, text in enumerate(texts):
                    utt = f"{speaker}-{chapter}-{index:04d}"
                    noise = 0.1 * rng.standard_normal(int(rng.uniform(0.2, 0.4) * 16000))
                    sf.write(folder / f"{utt}.flac", noise, 16000)
                    lines.append(f"{utt} {text}\n")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root


@pytest.fixture
def broken(corpus: Path, tmp_path: Path) -> Path:
    """A copy of ``corpus`` that a test may break."""
    return Path(shutil.copytree(corpus, tmp_path / "LibriSpeech"))


def run_prepare(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the recipe's prepare.py as a user would."""
    return subprocess.run([sys.executable, str(RECIPE / "prepare.py"), "--num-jobs", "1",
                           *map(str, args)], capture_output=True, text=True)


def assert_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """The script stopped with argparse's status 2 and ``message`` as its last line."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"prepare.py: error: {message}"


def test_prepare_writes_both_manifests_per_split(corpus, tmp_path):
    parts = prepare_librispeech(corpus, tmp_path / "data")
    assert [(p.name, p.utterances) for p in parts] == [("dev-clean", 1), ("train-clean-100", 6)]
    train = {p.name: p for p in parts}["train-clean-100"]
    assert train.jsonl_path == tmp_path / "data" / "train-clean-100.jsonl"
    assert 6 * 0.2 / 3600 <= train.hours <= 6 * 0.4 / 3600
    lines = {r["id"]: r for r in map(json.loads, train.jsonl_path.read_text().splitlines())}
    assert lines["19-198-0001"] == {
        "id": "19-198-0001",
        "audio": str(corpus / "train-clean-100" / "19" / "198" / "19-198-0001.flac"),
        "text": "he's a good fellow", "source": "librispeech/train-clean-100",
        "licence": "CC BY 4.0", "speaker": "19"}
    plain, lhotse = load_cuts(train.jsonl_path), load_cuts(train.cuts_path)
    assert sorted(plain.ids) == sorted(lhotse.ids) == sorted(lines)
    for cut_id in plain.ids:
        assert plain[cut_id].supervisions[0].text == lhotse[cut_id].supervisions[0].text
        assert plain[cut_id].duration == pytest.approx(lhotse[cut_id].duration)
    assert lhotse["26-495-0002"].load_audio().shape[1] == round(lhotse["26-495-0002"].duration
                                                                * 16000)


def test_chosen_parts_only(corpus, tmp_path):
    parts = prepare_corpus("librispeech", corpus, tmp_path, parts=["dev-clean"])
    assert [p.name for p in parts] == ["dev-clean"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-clean.cuts.jsonl.gz",
                                                          "dev-clean.jsonl"]


def test_unusable_transcripts_counted_and_skipped(tmp_path):
    folder = tmp_path / "LibriSpeech" / "dev-other" / "7" / "70"
    folder.mkdir(parents=True)
    for utt in ("7-70-0000", "7-70-0001"):
        sf.write(folder / f"{utt}.flac", np.full(3200, 0.1), 16000)
    (folder / "7-70.trans.txt").write_text("7-70-0000 FINE\n7-70-0001 -- ...\n")
    issues = DataIssues()
    parts = prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "data", issues=issues)
    assert parts[0].utterances == 1
    assert issues.counts == {"empty text": 1} and issues.examples["empty text"] == ["7-70-0001"]


def test_unknown_recipe_and_missing_folder(corpus, tmp_path):
    with pytest.raises(ValueError, match="no such Lhotse recipe"):
        prepare_corpus("not_a_corpus", corpus, tmp_path)
    with pytest.raises(FileNotFoundError, match="no such corpus folder"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ValueError, match="named LibriSpeech"):
        prepare_librispeech(tmp_path, tmp_path, download=True)


def test_recipe_script_runs(corpus, tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECIPE / "prepare.py"), "--corpus-dir", str(corpus),
         "--out-dir", str(tmp_path), "--parts", "dev-clean", "--num-jobs", "1"],
        capture_output=True, text=True, check=True)
    assert f"dev-clean: 1 utterances, 0.00 h -> {tmp_path / 'dev-clean.jsonl'}" in result.stdout
    assert load_cuts(tmp_path / "dev-clean.jsonl")["84-121123-0000"].supervisions[0].text == \
        "go do you hear"


def test_script_missing_part_is_a_one_line_error(corpus, tmp_path):
    result = run_prepare("--corpus-dir", corpus, "--out-dir", tmp_path / "out",
                         "--parts", "dev-clean", "dev-other")
    assert_error(result, f"{corpus / 'dev-other'}: not found "
                         "(parts present: train-clean-100, dev-clean)")
    assert not (tmp_path / "out").exists()  # stopped before any work


@pytest.mark.parametrize("line", ["84-121123-0001", ""])
def test_script_transcript_line_without_text(broken, tmp_path, line):
    transcript = broken / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    transcript.write_text(f"{transcript.read_text()}{line}\n")
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f'{transcript} line 2: expected "ID TEXT", got {line!r}')


def test_script_transcript_id_given_twice(broken, tmp_path):
    """Lhotse's recipe stopped with "RecordingSet has recordings with duplicated IDs"."""
    transcript = broken / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    transcript.write_text(f"{transcript.read_text()}84-121123-0000 AGAIN\n")
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f"{transcript} line 2: 84-121123-0000 again (first in 84-121123.trans.txt "
                 "line 1); each id once")


def test_download_fetches_only_the_parts_not_there(broken, tmp_path, monkeypatch):
    """A part unpacked by hand has no Lhotse ".completed" mark: Lhotse fetched it again and
    deleted the folder, with anything the user kept in it, to unpack the archive there."""
    from lhotse.recipes import librispeech

    fetched = []

    def download(target_dir, dataset_parts):  # no network here: unpack a copy instead
        fetched.extend(dataset_parts)
        for part in dataset_parts:
            shutil.copytree(broken / "dev-clean", Path(target_dir) / "LibriSpeech" / part)

    monkeypatch.setattr(librispeech, "download_librispeech", download)
    notes = broken / "dev-clean" / "MY_NOTES.txt"
    notes.write_text("mine")
    prepared = prepare_librispeech(broken, tmp_path, parts=["dev-clean", "dev-other"],
                                   download=True)
    assert fetched == ["dev-other"] and notes.read_text() == "mine"
    assert [p.name for p in prepared] == ["dev-clean", "dev-other"]
    prepare_librispeech(broken, tmp_path, parts=["dev-clean"], download=True)
    assert fetched == ["dev-other"]  # nothing absent: nothing fetched


def test_script_transcript_not_utf8(broken, tmp_path):
    transcript = broken / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    transcript.write_bytes("84-121123-0000 CAF\xc9\n".encode("latin-1"))
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f"{transcript}: not UTF-8 text (byte 18)")


def test_script_corpus_dir_a_file_or_without_parts(tmp_path):
    (tmp_path / "notes.txt").write_text("not a corpus")
    assert_error(run_prepare("--corpus-dir", tmp_path / "notes.txt", "--out-dir", tmp_path),
                 f"{tmp_path / 'notes.txt'}: not a folder")
    (tmp_path / "empty").mkdir()
    assert_error(run_prepare("--corpus-dir", tmp_path / "empty", "--out-dir", tmp_path),
                 f"{tmp_path / 'empty'}: no LibriSpeech parts in it "
                 "(folders such as train-clean-100)")


def test_script_part_without_transcripts_or_audio(broken, tmp_path):
    chapter = broken / "dev-clean" / "84" / "121123"
    (chapter / "84-121123-0000.flac").unlink()
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f"{broken / 'dev-clean'}: none of the audio files named in its transcripts "
                 f"exists (e.g. {chapter / '84-121123-0000.flac'})")
    (chapter / "84-121123.trans.txt").unlink()
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f"{broken / 'dev-clean'}: no transcript lines (*.trans.txt) in it")


def test_script_counts_missing_audio(broken, tmp_path):
    missing = broken / "train-clean-100" / "26" / "495" / "26-495-0001.flac"
    missing.unlink()
    result = run_prepare("--corpus-dir", broken, "--out-dir", tmp_path,
                         "--parts", "train-clean-100")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-2:] == ["skipped:", f"missing audio: 1 (e.g. {missing})"]


def test_script_unreadable_audio(broken, tmp_path):
    flac = broken / "dev-clean" / "84" / "121123" / "84-121123-0000.flac"
    flac.write_bytes(b"")  # e.g. a truncated download
    assert_error(run_prepare("--corpus-dir", broken, "--out-dir", tmp_path),
                 f"Fetching info about audio from '{flac}' failed.")


def test_script_out_dir_not_creatable(corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    for out_dir, reason in [("notes.txt", "a file, not a folder"),  # was "File exists"
                            ("notes.txt/data", "Not a directory")]:
        assert_error(run_prepare("--corpus-dir", corpus, "--out-dir", tmp_path / out_dir),
                     f"{tmp_path / out_dir}: cannot create the output folder ({reason})")


def test_script_out_dir_not_writable(corpus, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("prepare", RECIPE / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    monkeypatch.setattr(sys, "argv", ["prepare.py"])
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # chmod does not stop root
    with pytest.raises(SystemExit) as stopped:
        prepare.main(["--corpus-dir", str(corpus), "--out-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"prepare.py: error: {tmp_path}: the output folder is not writable"


def test_script_bad_options(corpus, tmp_path):
    assert_error(run_prepare("--corpus-dir", corpus, "--out-dir", tmp_path, "--num-jobs", "0"),
                 "--num-jobs must be at least 1")
    assert_error(run_prepare("--corpus-dir", tmp_path / "LibriSpeech", "--out-dir", tmp_path,
                             "--download", "--parts", "dev_clean"),
                 "dev_clean: not a LibriSpeech part (there are train-clean-100, train-clean-360, "
                 "train-other-500, dev-clean, dev-other, test-clean, test-other, dev-clean-2, "
                 "train-clean-5)")
    assert_error(run_prepare("--corpus-dir", corpus, "--out-dir", tmp_path, "--recipe", "tedlium"),
                 f"{corpus}: Lhotse's tedlium recipe failed: "
                 "No recordings left after fixing the manifests.")


@pytest.mark.parametrize(("size", "d_model"), [("s", 144), ("m", 256), ("l", 512)])
def test_training_configs_follow_the_paper(size, d_model):
    cfg = load_config(RECIPE / f"conformer-{size}.yaml")
    assert cfg.model.name == f"conformer-{size}" and cfg.model.encoder.d_model == d_model
    assert cfg.model.has_transducer and not cfg.model.has_ctc
    assert cfg.model.encoder.dropout == 0.1 and cfg.model.vocab_size == 1000
    spec = cfg.model.spec_augment
    assert (spec.freq_masks, spec.freq_width, spec.time_masks, spec.time_width_ratio) == (
        2, 27, 10, 0.05)
    assert cfg.optim.betas == (0.9, 0.98) and cfg.optim.eps == 1e-9
    assert cfg.optim.weight_decay == 1e-6 and cfg.optim.warmup_steps == 10000
    assert cfg.optim.peak(d_model) == pytest.approx(0.05 / d_model**0.5)
    assert cfg.data.tokenizer.vocab_size == 1000
    assert cfg.data.augment.speed == (0.9, 1.0, 1.1)
    assert [Path(p).name for p in cfg.data.train] == [
        "train-clean-100.jsonl", "train-clean-360.jsonl", "train-other-500.jsonl"]
    assert Path(cfg.data.train[0]).parent == RECIPE / "data"
