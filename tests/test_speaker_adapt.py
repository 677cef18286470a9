"""Adaptation to a speaker by self-training (inference.speaker_adapt): what it trains,
what it must leave alone, and the --adapt-to-speaker flags as a user runs them."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conformer_asr import load_model
from conformer_asr.audio.io import AudioError, load_audio
from conformer_asr.cli import main
from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference import adapt as adapt_module
from conformer_asr.inference import speaker_adapt
from conformer_asr.inference import transcriber as transcriber_module
from conformer_asr.inference.adapt import adapted_parameters, with_own_layer_norms
from conformer_asr.inference.speaker_adapt import (
    SpeakerAdaptation,
    adapted_to,
    encodings,
    iter_transcripts_by_speaker,
    speaker_entropy,
)
from conformer_asr.inference.transcriber import Transcriber
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig, quantize_int8
from conformer_asr.text.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[1] / "examples"


def _tiny(tmp_path: Path, ctc_weight: float = 1.0) -> Transcriber:
    torch.manual_seed(0)
    texts = [json.loads(line)["text"] for line in (DATA / "manifest.jsonl").open()]
    tokenizer = Tokenizer.train(texts, tmp_path / "tok", vocab_size=30)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=2, n_heads=2,
                                            conv_kernel_size=7, dropout=0.0),
                      vocab_size=tokenizer.vocab_size, ctc_weight=ctc_weight,
                      pred_embed_dim=16, pred_hidden_dim=32, joint_dim=32)
    return Transcriber(ASRModel(cfg), tokenizer)


def _ctc_loss(transcriber: Transcriber, waves: list[np.ndarray],
              targets: list[list[int]]) -> float:
    """The CTC loss of each wave towards its target, summed, computed one wave at a time."""
    total = 0.0
    with torch.no_grad():
        for wave, target in zip(waves, targets, strict=True):
            feats, lengths = transcriber.features(torch.from_numpy(wave)[None],
                                                  torch.tensor([len(wave)]))
            enc, enc_lengths = transcriber.model.encode(feats, lengths)
            log_probs = transcriber.model.ctc_head(enc).log_softmax(dim=-1)
            total += float(F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([target]),
                                      enc_lengths, torch.tensor([len(target)])))
    return total


def test_training_moves_only_the_copys_layer_norms_towards_the_targets(tmp_path):
    transcriber = _tiny(tmp_path)
    waves = [load_audio(DATA / f"clip{i}.wav") for i in (1, 2, 3)]
    targets = [transcriber.tokenizer.encode(t) for t in ("the cat sat", "a dog", "green")]
    before = {k: v.clone() for k, v in transcriber.model.state_dict().items()}
    copy = Transcriber(with_own_layer_norms(transcriber.model),
                       transcriber.tokenizer)
    loss_before = _ctc_loss(copy, waves, targets)
    speaker_adapt._train(copy, waves, targets, SpeakerAdaptation(epochs=5, lr=1e-2),
                         random.Random(0))
    assert _ctc_loss(copy, waves, targets) < 0.9 * loss_before
    for name, value in transcriber.model.state_dict().items():  # the model as it was
        assert torch.equal(value, before[name]), name
    norms = {id(p) for p in adapted_parameters(copy.model)}
    changed = {name for name, value in copy.model.state_dict().items()
               if not torch.equal(value, before[name])}
    assert changed == {n for n, p in copy.model.named_parameters() if id(p) in norms}
    originals = dict(transcriber.model.named_parameters())
    assert all(p is originals[n] for n, p in copy.model.named_parameters() if id(p) not in norms)


def test_adapted_to_trains_a_copy_and_leaves_the_transcriber_alone(monkeypatch):
    transcriber = load_model(adapt_steps=0, self_train_steps=0)
    norms = [p.clone() for p in adapted_parameters(transcriber.model)]
    paths = [EXAMPLES / "weather.wav", EXAMPLES / "station.flac"]
    adapted = adapted_to(transcriber, paths,
                         settings=SpeakerAdaptation(rounds=1, epochs=1, min_seconds=0))
    assert all(torch.equal(a, b) for a, b in zip(norms, adapted_parameters(transcriber.model),
                                                 strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(norms, adapted_parameters(adapted.model),
                                                     strict=True))
    assert adapted.model.encoder.subsampling is transcriber.model.encoder.subsampling
    assert adapted.lm is transcriber.lm  # every utterance adapted: no confidence gate
    assert adapted.options == replace(transcriber.options, confident_entropy=0.0,
                                      speaker_adaptation=False)  # its speaker is learnt
    # nothing to learn from, or too little (the two files hold 6.2 s): the transcriber itself
    assert adapted_to(transcriber, [EXAMPLES / "no-such.wav"]) is transcriber
    assert adapted_to(transcriber, paths) is transcriber
    assert adapted_to(transcriber, paths, settings=SpeakerAdaptation(min_seconds=6)) \
        is not transcriber
    # files whose headers say they are too short are not read; arrays are
    read = []
    monkeypatch.setattr(speaker_adapt, "_speech", lambda t, inputs, *rest: read.append(inputs))
    assert adapted_to(transcriber, paths) is transcriber and read == []
    samples = load_audio(paths[0])
    assert adapted_to(transcriber, [samples, paths[1]]) is transcriber and len(read) == 1


def test_a_voice_the_model_is_sure_of_is_not_learnt():
    """With the confidence gate on, a speaker whose speech as a whole the unadapted model is
    sure of is decoded as without; ``speaker_entropy`` is the posteriors' entropy over all
    the speaker's frames, as each segment encoded alone gives it."""
    transcriber = load_model()
    paths = [EXAMPLES / "weather.wav", EXAMPLES / "station.flac"]
    waves = [wave for path in paths for wave in transcriber.speech(path)]
    total, frames = 0.0, 0
    with torch.no_grad():
        for wave in waves:  # one at a time, no padding
            enc, enc_lengths = transcriber.model.encode(*transcriber.features_of([wave]))
            log_probs = transcriber.model.ctc_head(enc[0]).log_softmax(dim=-1)
            total += float(-(log_probs.exp() * log_probs).sum())
            frames += len(log_probs)
    entropy = speaker_entropy(transcriber.model, encodings(transcriber, waves))
    assert entropy == pytest.approx(total / frames, rel=1e-4)
    settings = SpeakerAdaptation(rounds=1, epochs=1, min_seconds=0)
    for threshold, learnt in ((1.01 * entropy, False), (0.99 * entropy, True)):
        gated = load_model(confident_entropy=threshold)
        assert (adapted_to(gated, paths, settings=settings) is not gated) == learnt
    # with the gate off (or nothing it gates), every speaker with speech enough is learnt
    for ungated in (load_model(confident_entropy=0),
                    load_model(confident_entropy=10, adapt_steps=0, self_train_steps=0)):
        assert adapted_to(ungated, paths, settings=settings) is not ungated


def test_the_rounds_decode_cheaply_and_the_copy_without_per_utterance_self_training(
        tmp_path, monkeypatch):
    """The rounds' transcripts come from a narrower beam with no per-utterance adaptation;
    the copy returned keeps the transcriber's beam and adaptation but not its per-utterance
    self-training, which the speaker's supersedes (no targets reach its encoding)."""
    tiny = _tiny(tmp_path)
    options = DecodingOptions(beam_size=6, adapt_steps=2, self_train_steps=2)
    transcriber = Transcriber(tiny.model, tiny.tokenizer, options)
    encoded, searched = [], []
    encode, decode = transcriber_module.encode, transcriber_module.decode

    def spy_encode(model, feats, lengths, options, targets=None):
        encoded.append((options.adapt_steps, options.self_train_steps, targets))
        return encode(model, feats, lengths, options, targets)

    def spy_decode(model, enc, enc_lengths, options, *rest):
        searched.append((options.beam_size, options.adapt_steps, options.self_train_steps))
        return decode(model, enc, enc_lengths, options, *rest)
    monkeypatch.setattr(transcriber_module, "encode", spy_encode)
    monkeypatch.setattr(adapt_module, "encode", spy_encode)  # a self-training's second decoding
    monkeypatch.setattr(transcriber_module, "decode", spy_decode)
    settings = SpeakerAdaptation(label_beam_size=4, min_seconds=0)
    adapted = adapted_to(transcriber, [DATA / "clip1.wav"], settings=settings)
    assert searched == [(4, 0, 0)] * 2 and encoded == []  # two rounds, one segment each
    assert adapted.options == replace(options, self_train_steps=0)
    assert transcriber.options == options
    adapted.transcribe([DATA / "clip1.wav"])
    assert searched[2:] == [(6, 2, 0)] and encoded == [(2, 0, None)]
    # a transcriber's narrower beam is the rounds' too
    searched.clear()
    adapted_to(transcriber, [DATA / "clip1.wav"],
               settings=SpeakerAdaptation(rounds=1, label_beam_size=32, min_seconds=0))
    assert searched == [(6, 0, 0)]


def test_a_speaker_is_encoded_a_batch_at_a_time_and_once_for_the_gate_and_first_round(
        tmp_path, monkeypatch):
    """A speaker's segments are encoded in batches within the consecutive runs the
    transcriber's ``batch_seconds`` allows (one segment at the least), not all at once, so
    that memory is bounded by a batch. The confidence measure's unadapted encoding is the
    one the first round decodes; each later round encodes again, with the adapted
    encoder."""
    tiny = _tiny(tmp_path)
    options = DecodingOptions(adapt_steps=1, confident_entropy=1e-3)  # unsure: learnt
    transcriber = Transcriber(tiny.model, tiny.tokenizer, options, batch_seconds=3.0)
    paths = [DATA / f"clip{i}.wav" for i in (1, 2, 3)] * 2  # 1.2-1.9 s each
    log: list[tuple] = []
    features_of, decode_encoded = Transcriber.features_of, Transcriber.decode_encoded
    train = speaker_adapt._train

    def spy_features(self, waves):
        log.append(("encode", [len(w) for w in waves]))
        return features_of(self, waves)

    def spy_decode(self, enc, enc_lengths):
        log.append(("decode", enc_lengths.tolist()))
        return decode_encoded(self, enc, enc_lengths)

    def spy_train(*args):
        log.append(("train",))
        with monkeypatch.context() as inner:  # its own batches are not the labelling's
            inner.setattr(Transcriber, "features_of", features_of)
            train(*args)
    monkeypatch.setattr(Transcriber, "features_of", spy_features)
    monkeypatch.setattr(Transcriber, "decode_encoded", spy_decode)
    monkeypatch.setattr(speaker_adapt, "_train", spy_train)
    adapted = adapted_to(transcriber, paths,
                         settings=SpeakerAdaptation(rounds=2, epochs=1, min_seconds=0))
    assert adapted is not transcriber
    first = log.index(("train",))
    assert log[first + 1:].count(("train",)) == 1 and log[-1] == ("train",)
    measured = [lengths for kind, lengths in log[:first] if kind == "encode"]
    frames = [lengths for kind, lengths in log[:first] if kind == "decode"]
    assert log[:first] == [("encode", b) for b in measured] + [("decode", f) for f in frames]
    assert len(frames) == len(measured) and all(
        len(f) == len(b) for f, b in zip(frames, measured, strict=True))
    # the segments in order: clips 1 and 2 fit in 3 s, 3 does not; a run's batches are its
    segments = [len(w) for path in paths for w in transcriber.speech(path)]
    runs = [segments[:2], segments[2:3], segments[3:5], segments[5:]]
    assert len(segments) == 6 and all(sum(run) <= 3.0 * 16000 for run in runs)
    assert sum(runs[0]) + runs[1][0] > 3.0 * 16000
    flat, start = sum(measured, []), 0
    for run in runs:
        assert sorted(flat[start:start + len(run)]) == sorted(run)
        start += len(run)
        assert start in itertools.accumulate(map(len, measured))  # no batch spans two runs
    assert start == len(flat)
    # the second round: each batch encoded by the adapted encoder, then searched
    second = log[first + 1:-1]
    assert [entry for entry in second if entry[0] == "encode"] == [("encode", b)
                                                                   for b in measured]
    assert [entry for entry in second if entry[0] == "decode"] == [("decode", f)
                                                                   for f in frames]


def test_an_int8_model_adapts_through_its_int8_layers(tmp_path):
    float32 = _tiny(tmp_path)
    int8 = Transcriber(quantize_int8(float32.model), float32.tokenizer)
    norms = [p.clone() for p in adapted_parameters(int8.model)]
    adapted = adapted_to(int8, [DATA / "clip1.wav"],
                         settings=SpeakerAdaptation(rounds=1, min_seconds=0))
    assert not all(torch.equal(a, b) for a, b in zip(norms, adapted_parameters(adapted.model),
                                                     strict=True))


def test_by_speaker_adapts_each_speaker_once_and_yields_in_input_order(monkeypatch):
    transcriber = load_model(lm=None)
    groups, rates, calls = [], [], []
    a, b = EXAMPLES / "weather.wav", EXAMPLES / "station.flac"
    missing = EXAMPLES / "no-such.wav"

    def fake_adapted_to(t, inputs, rate, settings, progress):  # b's is learnt, a's not
        groups.append(list(inputs))
        rates.append(rate)
        return copy.copy(t) if any(item is b for item in inputs) else t
    monkeypatch.setattr(speaker_adapt, "adapted_to", fake_adapted_to)
    iter_decoded = Transcriber.iter_decoded
    monkeypatch.setattr(Transcriber, "iter_decoded", lambda self, inputs, *rest, **more: (
        calls.append((self is transcriber, list(inputs)))
        or iter_decoded(self, inputs, *rest, **more)))
    inputs = [a, b, missing, a]
    results = list(iter_transcripts_by_speaker(transcriber, inputs, ["x", "y", "x", "x"]))
    assert groups == [[a, missing, a], [b]]
    # the speaker too short to learn from waits for more of its kind, up to the end
    assert calls == [(False, [b]), (True, [a, missing, a])]
    calls.clear()
    monkeypatch.setattr(speaker_adapt, "PLAIN_RUN", 2)  # so many wait, no more
    assert len(list(iter_transcripts_by_speaker(transcriber, [a] * 3, ["p", "q", "r"]))) == 3
    assert calls == [(True, [a, a]), (True, [a])]
    assert [item for item, _ in results] == inputs
    assert isinstance(results[2][1], AudioError)
    texts = transcriber.transcribe([a, b])
    assert [results[0][1].text, results[1][1].text, results[3][1].text] == [*texts, texts[0]]
    samples = load_audio(a, target_rate=8000)  # arrays at their own rate, as given
    ((_, result),) = iter_transcripts_by_speaker(transcriber, [samples], ["x"], sample_rate=8000)
    assert rates[-1] == 8000 and result.text == transcriber.transcribe(samples, 8000)[0]
    with pytest.raises(ValueError, match="^2 speakers for 4 inputs$"):
        list(iter_transcripts_by_speaker(transcriber, inputs, ["x", "y"]))


def test_an_array_is_named_by_its_place_among_all_the_inputs(monkeypatch):
    """A learnt speaker's inputs are transcribed apart from the rest: an unreadable array
    after a learnt one was named by its place among the rest ("input 0")."""
    transcriber = load_model(lm=None)
    learnt = load_audio(EXAMPLES / "weather.wav")
    monkeypatch.setattr(speaker_adapt, "adapted_to", lambda t, inputs, *rest:
                        copy.copy(t) if inputs[0] is learnt else t)
    broken = np.full(1000, np.nan, dtype=np.float32)
    (_, first), (_, second) = iter_transcripts_by_speaker(transcriber, [learnt, broken], [0, 1])
    assert first.text == transcriber.transcribe(learnt)[0]
    assert str(second) == "input 1: corrupt audio data (NaN or infinite samples)"


def test_progress_is_told_each_round_and_how_far_each_batch_decoded(tmp_path):
    """A long recording is learnt and decoded for minutes: ``progress`` hears as each round
    starts and after each batch how far into its input it reached, of the file's length;
    a speaker without a name is named by its first input, an array by its place."""
    import soundfile as sf

    from conformer_asr.inference.transcriber import clock

    transcriber = _tiny(tmp_path)
    transcriber.batch_seconds = 8.0  # several batches in the recording's 33 s
    clips = [load_audio(DATA / f"clip{i}.wav") for i in range(1, 5)]
    gap = np.zeros(8000, np.float32)
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([part for clip in clips * 4 for part in (clip, gap)]), 16000)
    length = clock(sf.info(long).duration)
    speech = clock(sum(len(w) for item in (long, clips[0])
                       for w in transcriber.speech(item)) / 16000)
    lines: list[str] = []
    settings = SpeakerAdaptation(rounds=2, epochs=1, min_seconds=0)
    told = list(iter_transcripts_by_speaker(transcriber, [long, clips[0]], [0, 0],
                                            settings, progress=lines.append))
    assert lines[:2] == [f"{long} and 1 more: learning the voice from {speech} of speech, "
                         f"round {n} of 2" for n in (1, 2)]
    decoded = [re.fullmatch(rf"{re.escape(str(long))}: 0:(\d\d) of {length} decoded", line)
               for line in lines[2:-1]]
    assert len(decoded) >= 3 and all(decoded), lines
    reached = [int(match[1]) for match in decoded]
    assert reached == sorted(reached) and reached[-1] <= int(length[2:])
    assert lines[-1] == f"input 1: 0:0{int(len(clips[0]) / 16000)} decoded"  # no header
    untold = list(iter_transcripts_by_speaker(transcriber, [long, clips[0]], [0, 0],
                                              settings))
    assert [r.text for _, r in told] == [r.text for _, r in untold]
    lines.clear()
    transcriber.transcribe(long, progress=lines.append)  # unadapted: decoded lines only
    assert lines and all(line.startswith(f"{long}: ") for line in lines)


def test_evaluate_tells_as_each_voice_is_learnt(tmp_path):
    """evaluate's line sat on "0 of N utterances scored" while the first voice was learnt."""
    import soundfile as sf

    from conformer_asr.inference.evaluate import evaluate
    from conformer_asr.inference.transcriber import clock

    transcriber = _tiny(tmp_path)
    transcriber.options = replace(transcriber.options, speaker_adaptation=True)
    clips = [load_audio(DATA / f"clip{i}.wav") for i in range(1, 5)]
    gap = np.zeros(8000, np.float32)
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([part for clip in clips * 5 for part in (clip, gap)]), 16000)
    short = DATA / "clip1.wav"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(i), "audio": str(path), "text": "a",
                                            "speaker": "x"}) + "\n"
                                for i, path in enumerate((long, short))))
    speech = clock(sum(len(w) for path in (long, short)
                       for w in transcriber.speech(path)) / 16000)
    lines: list[str] = []
    evaluate(transcriber, manifest, progress=lines.append)
    assert lines[:2] == [f"x: learning the voice from {speech} of speech, round {n} of 2 "
                         "(0 of 2 scored)" for n in (1, 2)]  # the speaker, by their name
    assert lines[-2:] == ["1 of 2 utterances scored", "2 of 2 utterances scored"]
    assert all(line.endswith("(0 of 2 scored)") for line in lines[2:-2])


def test_iter_transcripts_learns_each_input_as_transcribe_does(tmp_path, monkeypatch):
    """Where the decoding learns speakers, ``transcribe`` learnt each input's voice and
    ``iter_transcripts`` decoded utterance by utterance: the bundled model's word timings
    came from another transcript than its text (4 words apart on 44 s of one voice). An
    endless generator is still drawn from as results are needed."""
    transcriber = _tiny(tmp_path)
    transcriber.options = replace(transcriber.options, speaker_adaptation=True)
    clips = [load_audio(DATA / f"clip{i}.wav") for i in range(1, 5)]
    gap = np.zeros(8000, np.float32)
    long = np.concatenate([part for clip in clips * 5 for part in (clip, gap)])  # 34 s spoken
    learnt = []
    real_adapted_to = speaker_adapt.adapted_to
    monkeypatch.setattr(speaker_adapt, "adapted_to", lambda t, inputs, *rest: (
        adapted := real_adapted_to(t, inputs, *rest), learnt.append(adapted is not t))[0])
    ((_, result),) = transcriber.iter_transcripts(long)
    assert learnt == [True]
    ((_, by_speaker),) = iter_transcripts_by_speaker(transcriber, [long], ["x"])
    assert result.text == by_speaker.text == transcriber.transcribe(long)[0]
    assert result.words == by_speaker.words
    drawn = []

    def recordings():
        while len(drawn) < 1000:  # "endless": listing it would hang, not fail
            drawn.append(len(drawn))
            yield clips[0]
        raise RuntimeError("drawn to its end")

    results = transcriber.iter_transcripts(recordings())
    assert next(results)[1].text == transcriber.transcribe(clips[0])[0]
    assert len(drawn) == speaker_adapt.PLAIN_RUN  # the inputs of one batched call


def test_transcribe_learns_each_file_or_all_files_as_one_speaker(monkeypatch, capsys):
    groups = []
    monkeypatch.setattr(speaker_adapt, "adapted_to", lambda t, inputs, rate, settings, progress:
                        groups.append(list(inputs)) or t)
    a, b = str(EXAMPLES / "weather.wav"), str(EXAMPLES / "station.flac")
    flags = ["--lm", "none", "--adapt-to-speaker"]
    assert main(["transcribe", a, b, *flags]) == 0
    assert groups == [[a], [b]]
    each = capsys.readouterr().out
    groups.clear()
    assert main(["transcribe", a, b, *flags, "--one-speaker"]) == 0
    assert groups == [[a, b]]
    assert capsys.readouterr().out == each  # in input order, as the adapted copies read them
    assert main(["transcribe", a, "--one-speaker", "--no-adapt-to-speaker"]) == 2
    assert capsys.readouterr().err == ("error: --one-speaker: learns the files' speaker "
                                       "together, which --no-adapt-to-speaker turns off\n")
    assert main(["transcribe", a, "--one-speaker", "--lm", "none"]) == 2  # no folder settings
    assert capsys.readouterr().err.endswith("does not do; give --adapt-to-speaker too\n")
    assert groups == [[a, b]]  # neither refusal learnt anything


def test_the_bundled_decoding_learns_each_speaker_unless_told_not_to(monkeypatch, capsys):
    groups = []
    monkeypatch.setattr(speaker_adapt, "adapted_to", lambda t, inputs, rate, settings, progress:
                        groups.append(list(inputs)) or t)
    a, b = str(EXAMPLES / "weather.wav"), str(EXAMPLES / "station.flac")
    fast = ["--beam-size", "4", "--adapt-steps", "0", "--self-train-steps", "0"]
    assert main(["transcribe", a, b, *fast]) == 0  # the bundled model's setting
    assert groups == [[a], [b]]
    learnt = capsys.readouterr().out
    assert main(["transcribe", a, b, *fast, "--no-adapt-to-speaker"]) == 0
    assert groups == [[a], [b]] and capsys.readouterr().out == learnt  # too short to learn
    assert load_model().options.speaker_adaptation
    plain = load_model(lm=None, speaker_adaptation=False)
    assert plain.transcribe([a, b]) and groups == [[a], [b]]
    learning = load_model(lm=None, speaker_adaptation=True)
    assert learning.transcribe([a, b]) == plain.transcribe([a, b])
    assert groups == [[a], [b], [a], [b]]  # transcribe() takes each input as a speaker
    assert learning.transcribe(a) == plain.transcribe(a) and groups[-1] == [a]
    with pytest.raises(ValueError, match="^sample_rate: "):
        learning.transcribe(a, sample_rate=16)


def test_a_model_without_a_ctc_head_and_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="CTC head"):
        adapted_to(_tiny(tmp_path, ctc_weight=0.0), [DATA / "clip1.wav"])
    with pytest.raises(ValueError, match="^speaker_adaptation: adaptation to each speaker "
                                         "needs a CTC head"):
        DecodingOptions(speaker_adaptation=True).check_model(
            _tiny(tmp_path, ctc_weight=0.0).model)
    with pytest.raises(ValueError, match="^speaker_adaptation: True or False, got 1$"):
        DecodingOptions(speaker_adaptation=1)
    for field, value in [("rounds", 0), ("epochs", 1.5), ("lr", 0.0),
                         ("max_seconds", float("inf")), ("batch_seconds", True),
                         ("label_beam_size", 0), ("min_seconds", -1.0)]:
        with pytest.raises(ValueError, match=f"^{field}: "):
            SpeakerAdaptation(**{field: value})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformer_asr.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_a_file_cut_short_is_named_once(tmp_path):
    """A WAV whose header gives no samples (a recorder killed early) was warned of twice
    with speakers learnt (its header read, then its samples), and its header read for the
    progress line warned too."""
    import warnings

    import soundfile as sf

    from conformer_asr.audio.io import AudioWarning
    from conformer_asr.inference.transcriber import header_length

    clips = [load_audio(DATA / f"clip{i}.wav") for i in range(1, 5)]
    gap = np.zeros(8000, np.float32)
    finished = tmp_path / "finished.wav"
    sf.write(finished, np.concatenate([part for clip in clips * 5 for part in (clip, gap)]),
             16000)
    data = finished.read_bytes()
    at = data.index(b"data")  # RIFF and data sizes 0
    unfinished = tmp_path / "unfinished.wav"
    unfinished.write_bytes(data[:4] + bytes(4) + data[8:at] + b"data" + bytes(4) + data[at + 8:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert header_length(unfinished) == pytest.approx(len(load_audio(finished)) / 16000)
        load_audio(unfinished)
    assert [type(w.message) for w in caught] == [AudioWarning]  # the samples' read only
    for flags in ([], ["--one-speaker"]):  # each file learnt alone, or the files together
        proc = _cli("transcribe", str(unfinished), str(DATA / "clip1.wav"), *flags)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("warning: ") == 1, proc.stderr
        assert proc.stderr.startswith(f"warning: {unfinished}: its header gives no samples")


def test_the_flags_as_a_user_runs_them(tmp_path):
    manifest = tmp_path / "manifest.jsonl"  # two speakers, and a file that is not there
    lines = [json.loads(line) for line in (EXAMPLES / "manifest.jsonl").open()][:2]
    lines = [{**line, "audio": str(EXAMPLES / line["audio"]), "speaker": "s1"} for line in lines]
    lines.append({"id": "gone", "audio": str(tmp_path / "gone.wav"), "text": "hello",
                  "speaker": "s2"})
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = _cli("evaluate", "--manifest", str(manifest), "--json")  # the bundled decoding
    assert proc.returncode == 1, proc.stderr  # the missing file, named
    report = json.loads(proc.stdout)
    assert report["decoding"]["speaker_adaptation"] is True and report["utterances"] == 3
    assert report["failed"] == 1 and "gone.wav: no such file" in proc.stderr
    assert set(report["by_speaker"]) == {"s1", "s2"}

    proc = _cli("transcribe", str(EXAMPLES / "weather.wav"), str(tmp_path / "gone.wav"),
                "--adapt-to-speaker")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{EXAMPLES / 'weather.wav'}\t") and len(
        proc.stdout.splitlines()) == 1
    assert proc.stderr == f"error: {tmp_path / 'gone.wav'}: no such file\n"
