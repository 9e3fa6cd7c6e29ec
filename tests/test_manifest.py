"""Clip lists (SSAST JSON and JSON Lines), audio folders, label CSVs and missing-file reports."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_wav
from ssast.data.manifest import (
    DataError,
    LabelSet,
    check_files,
    list_audio_folder,
    read_json_list,
    read_label_csv,
    report_missing,
)


def test_label_csv_and_encoding(tiny_corpus):
    labels = read_label_csv(tiny_corpus.label_csv)
    assert len(labels) == 3
    assert labels.ids == tiny_corpus.mids
    assert labels.names[1] == "Class 1, test"  # quoted name with a comma
    assert labels.index_of("/m/ccc") == 2
    np.testing.assert_array_equal(labels.encode(["/m/aaa", "/m/ccc"]), np.array([1, 0, 1], np.float32))
    assert labels.encode([]).sum() == 0
    with pytest.raises(DataError, match="/m/zzz"):
        labels.encode(["/m/zzz"])


def test_label_csv_errors_name_file_and_line(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b\n")
    with pytest.raises(DataError, match=r"labels\.csv, line 3"):
        read_label_csv(p)
    p.write_text("index,mid,display_name\n0,/m/a,A\nx,/m/b,B\n")
    with pytest.raises(DataError, match=r"line 3: index 'x'"):
        read_label_csv(p)
    p.write_text("0,/m/a,A\n2,/m/b,B\n")  # no header, but a gap
    with pytest.raises(DataError, match="without gaps"):
        read_label_csv(p)
    with pytest.raises(DataError, match="not found"):
        read_label_csv(tmp_path / "nope.csv")


def test_from_names_sorted():
    ls = LabelSet.from_names(["dog", "cat", "dog", "bird"])
    assert ls.ids == ["bird", "cat", "dog"] and ls.index_of("dog") == 2


def test_json_list_relative_absolute_and_labels(tiny_corpus, tmp_path):
    labels = read_label_csv(tiny_corpus.label_csv)
    clips = read_json_list(tiny_corpus.json_list, labels)
    assert [c.path for c in clips] == [str(p) for p in tiny_corpus.wavs]  # resolved against the JSON's folder
    assert [c.labels for c in clips] == tiny_corpus.labels
    assert clips[0].key == "audio/clip00.wav"
    # absolute paths are kept; list-valued labels accepted; labels optional
    other = tmp_path / "elsewhere" / "list.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"data": [
        {"wav": str(tiny_corpus.wavs[0]), "labels": ["/m/bbb"]},
        {"wav": str(tiny_corpus.wavs[1])},
    ]}))
    clips = read_json_list(other)
    assert clips[0].path == str(tiny_corpus.wavs[0]) and clips[0].labels == ["/m/bbb"]
    assert clips[1].labels == []


def test_jsonl_and_malformed_line(tmp_path):
    p = tmp_path / "list.jsonl"
    p.write_text('{"wav": "a.wav", "labels": "/m/a"}\n\n{"wav": "b.wav"}\n')
    clips = read_json_list(p)
    assert [c.path for c in clips] == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    p.write_text('{"wav": "a.wav"}\n{"wav": "b.wav"\n')
    with pytest.raises(DataError, match=r"list\.jsonl, line 2: malformed JSON"):
        read_json_list(p)
    # JSON Lines under a .json name are recognised too, with the same line numbers
    q = tmp_path / "lines.json"
    q.write_text('{"wav": "a.wav"}\n{"wav": "b.wav"}\n{"wav": \n')
    with pytest.raises(DataError, match=r"lines\.json, line 3"):
        read_json_list(q)


def test_malformed_json_and_entries(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"data": [{"wav": "a.wav",}]}')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        read_json_list(p)
    p.write_text(json.dumps({"data": [{"wav": "a.wav"}, {"path": "b.wav"}]}))
    with pytest.raises(DataError, match=r"bad\.json, entry 1: missing the 'wav' path"):
        read_json_list(p)
    p.write_text(json.dumps({"items": []}))
    with pytest.raises(DataError, match="expected"):
        read_json_list(p)


def test_label_not_in_csv_names_file_entry_label(tiny_corpus):
    labels = read_label_csv(tiny_corpus.label_csv)
    data = json.loads(tiny_corpus.json_list.read_text())
    data["data"][4]["labels"] = "/m/aaa,/m/unknown"
    tiny_corpus.json_list.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        read_json_list(tiny_corpus.json_list, labels)
    msg = str(info.value)
    assert "train.json, entry 4" in msg and "'/m/unknown'" in msg and "class_labels_indices.csv" in msg


def test_audio_folder_recursive_sorted(tmp_path):
    for rel in ["b/z.flac", "a/y.wav", "a/x.ogg", "c.mp3", "notes.txt", "a/.hidden.wav"]:
        p = tmp_path / rel
        if rel.endswith(".txt"):
            p.write_text("x")
        else:
            make_wav(p, 0.1)
    clips = list_audio_folder(tmp_path)
    assert [c.key for c in clips] == ["a/x.ogg", "a/y.wav", "b/z.flac", "c.mp3"]
    assert all(c.labels == [] for c in clips)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no audio files"):
        list_audio_folder(empty)
    with pytest.raises(DataError, match="not found"):
        list_audio_folder(tmp_path / "missing")


def test_missing_files_report_count_and_examples(tiny_corpus, capsys):
    clips = read_json_list(tiny_corpus.json_list)
    for p in tiny_corpus.wavs[:3]:
        p.unlink()
    missing = check_files(clips, "train.json")
    assert missing == [str(p) for p in tiny_corpus.wavs[:3]]
    with pytest.raises(DataError) as info:
        report_missing(missing, "train.json", len(clips))
    msg = str(info.value)
    assert "3 of 6 files are missing" in msg and str(tiny_corpus.wavs[0]) in msg and "allow_missing" in msg
    assert report_missing(missing, "train.json", len(clips), allow_missing=True)
    assert capsys.readouterr().err.startswith("warning: train.json: 3 of 6 files are missing")
    assert report_missing([], "train.json", 6) is None


def test_missing_report_lists_first_five(tmp_path):
    missing = [f"/nowhere/{i}.wav" for i in range(12)]
    with pytest.raises(DataError) as info:
        report_missing(missing, "big.json", 100)
    msg = str(info.value)
    assert "/nowhere/4.wav" in msg and "/nowhere/5.wav" not in msg and "7 more" in msg
