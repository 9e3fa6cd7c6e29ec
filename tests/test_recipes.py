"""The recipes in pretrain/ and finetune/ on tiny fakes of each publisher's layout (real folder and file names,
a handful of short synthetic clips): lists, folds, label indices, 16 kHz conversion, missing-file reports,
idempotency, shards; the launch scripts' commands; and ESC-50 fine-tuning end to end through its run.sh."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssast.config import load_config
from ssast.data.lists import list_path, stratified_split, write_json_list, write_label_csv
from ssast.data.manifest import Clip, DataError, read_json_list, read_label_csv
from ssast.data.shards import read_index
from ssast.models.checkpoint import read_checkpoint_meta

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = [
    "model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "model.input_tdim=64",
    "audio.target_length=64", "data.num_workers=0", "data.batch_size=4", "train.progress=none",
    "train.precision=fp32",
]


def tone(path: Path, seconds: float, sr: int, freq: float, channels: int = 1) -> None:
    """A short sine clip (plus a little noise so that no clip is constant), written in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(freq))
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    data = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else x
    sf.write(str(path), data.astype(np.float32), sr)


def load_script(rel: str):
    """Import a recipe script as a module (its main(argv) runs in this process: no interpreter start-up)."""
    name = "recipe_" + rel.replace("/", "_").replace(".py", "")
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the script look their module up there
    spec.loader.exec_module(mod)
    return mod


def run_main(rel: str, args: list, capsys) -> str:
    code = load_script(rel).main([str(a) for a in args] + ["--quiet", "--workers", "1"])
    assert code == 0
    return capsys.readouterr().out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def env() -> dict:
    e = dict(os.environ, PYTHON=PY, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return e


# ---------------------------------------------------------------------------------------------------------------
# the library writers


def test_json_list_paths_labels_and_untouched_rewrite(tmp_path):
    out = tmp_path / "lists"
    inside, outside = out / "audio" / "a.wav", tmp_path / "elsewhere" / "b.wav"
    for p in (inside, outside):
        tone(p, 0.1, 16000, 300)
    n = write_json_list(out / "x.json", [Clip(str(inside), ["/m/a", "/m/b"]), Clip(str(outside), [])])
    assert n == 2
    raw = json.loads((out / "x.json").read_text())["data"]
    assert raw[0] == {"wav": "audio/a.wav", "labels": "/m/a,/m/b"}  # inside: relative, portable
    assert raw[1]["wav"] == str(outside.resolve())  # outside: absolute
    clips = read_json_list(out / "x.json")
    assert [Path(c.path).resolve() for c in clips] == [inside.resolve(), outside.resolve()]
    assert clips[0].labels == ["/m/a", "/m/b"] and clips[1].labels == []
    before = (out / "x.json").stat().st_mtime_ns
    write_json_list(out / "x.json", [Clip(str(inside), ["/m/a", "/m/b"]), Clip(str(outside), [])])
    assert (out / "x.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="comma"):
        write_json_list(out / "y.json", [Clip(str(inside), ["a,b"])])
    assert list_path(inside, out) == "audio/a.wav"


def test_label_csv_round_trip_with_commas_and_quotes(tmp_path):
    write_label_csv(tmp_path / "l.csv", ["/m/x", "/m/y"], ['Speech, male', 'Say "hi"'])
    labels = read_label_csv(tmp_path / "l.csv")
    assert labels.ids == ["/m/x", "/m/y"] and labels.names == ['Speech, male', 'Say "hi"']
    with pytest.raises(DataError, match="twice"):
        write_label_csv(tmp_path / "m.csv", ["a", "a"])


def test_stratified_split_is_per_class_and_seeded():
    items = [(f"{c}{i}", c) for c in "abc" for i in range(10)]
    parts = stratified_split(items, lambda x: x[1], {"valid": 0.2, "test": 0.1}, seed=3)
    for c in "abc":
        assert sum(x[1] == c for x in parts["valid"]) == 2
        assert sum(x[1] == c for x in parts["test"]) == 1
        assert sum(x[1] == c for x in parts["train"]) == 7
    assert sorted(sum(parts.values(), [])) == sorted(items)
    assert parts == stratified_split(items, lambda x: x[1], {"valid": 0.2, "test": 0.1}, seed=3)
    assert parts != stratified_split(items, lambda x: x[1], {"valid": 0.2, "test": 0.1}, seed=4)
    tiny = stratified_split([("x", "z")], lambda x: x[1], {"valid": 0.5, "test": 0.5 - 1e-9})
    assert tiny["train"] == [("x", "z")]  # a class keeps at least one training clip


# ---------------------------------------------------------------------------------------------------------------
# ESC-50

ESC_CLASSES = ["dog", "rain", "crying_baby"]


def fake_esc50(root: Path, folds: int = 5) -> list[str]:
    """ESC-50-master/{audio,meta}: one 0.5 s 44.1 kHz clip per (fold, class); one stereo clip; one unlisted file."""
    rows, names = [], []
    for fold in range(1, folds + 1):
        for target, cat in enumerate(ESC_CLASSES):
            name = f"{fold}-{100000 + 10 * fold + target}-A-{target}.wav"
            tone(root / "audio" / name, 0.5, 44100, 200 + 150 * target + 10 * fold,
                 channels=2 if (fold, target) == (2, 1) else 1)
            rows.append(f"{name},{fold},{target},{cat},False,{100000 + fold},A")
            names.append(name)
    tone(root / "audio" / "9-999-A-0.wav", 0.2, 44100, 500)  # not in the CSV: reported, ignored
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                             + "\n".join(rows) + "\n")
    return names


def test_esc50_folds_labels_16k_and_idempotent(tmp_path, capsys):
    root = tmp_path / "ESC-50-master"
    fake_esc50(root)
    out = tmp_path / "data" / "esc50"
    text = run_main("finetune/esc50/prepare.py", ["--root", root, "--out", out], capsys)
    labels = read_label_csv(out / "labels.csv")
    assert labels.ids == ESC_CLASSES  # index = target
    for k in range(1, 6):
        held = read_json_list(out / f"fold{k}_eval.json", labels)
        train = read_json_list(out / f"fold{k}_train.json", labels)
        assert len(held) == 3 and len(train) == 12
        assert all(Path(c.path).name.startswith(f"{k}-") for c in held)
        assert not any(Path(c.path).name.startswith(f"{k}-") for c in train)
        for c in held:
            target = int(Path(c.path).stem.split("-")[-1])
            assert c.labels == [ESC_CLASSES[target]]
            assert Path(c.path).parent == (out / "audio_16k").resolve() or Path(c.path).parent.name == "audio_16k"
    info = sf.info(str(out / "audio_16k" / "2-100021-A-1.wav"))  # the stereo one
    assert (info.samplerate, info.channels) == (16000, 1) and abs(info.frames - 8000) <= 2
    assert "15 converted" in text and "not in esc50.csv (ignored): 1" in text and "channel" in text
    assert json.loads((out / "fold1_eval.json").read_text())["data"][0]["wav"].startswith("audio_16k/")

    before = snapshot(out)
    text = run_main("finetune/esc50/prepare.py", ["--root", root, "--out", out], capsys)
    assert "0 converted, 15 already there" in text
    assert snapshot(out) == before  # same bytes, not even rewritten

    (root / "audio" / "3-100031-A-1.wav").unlink()  # listed but missing: reported, left out
    text = run_main("finetune/esc50/prepare.py", ["--root", root, "--out", tmp_path / "other"], capsys)
    assert "missing on disk: 1" in text
    assert len(read_json_list(tmp_path / "other" / "fold3_eval.json")) == 2


def test_esc50_no_resample_and_clear_errors(tmp_path, capsys):
    root = tmp_path / "ESC-50-master"
    fake_esc50(root, folds=2)
    out = tmp_path / "esc"
    run_main("finetune/esc50/prepare.py", ["--root", root, "--out", out, "--no-resample"], capsys)
    clips = read_json_list(out / "fold1_eval.json")
    assert all(sf.info(c.path).samplerate == 44100 for c in clips) and not (out / "audio_16k").exists()
    mod = load_script("finetune/esc50/prepare.py")
    with pytest.raises(DataError, match="ESC-50-master folder"):
        mod.main(["--root", str(tmp_path / "nowhere")])
    bad = root / "meta" / "esc50.csv"
    bad.write_text(bad.read_text().replace("1-100010-A-0.wav,1,", "1-100010-A-0.wav,2,"))
    with pytest.raises(DataError, match=r"esc50.csv, line 2: .*disagrees"):
        mod.main(["--root", str(root), "--out", str(out)])


def test_esc50_run_sh_end_to_end_with_fold_summary(tmp_path):
    root = tmp_path / "ESC-50-master"
    fake_esc50(root, folds=2)
    runs = tmp_path / "runs"
    e = dict(env(), ESC50_ROOT=str(root), DATA=str(tmp_path / "data"), RUNS=str(runs), FOLDS="1 2")
    proc = subprocess.run(["bash", str(REPO / "finetune/esc50/run.sh"), "scratch", "patch", *TINY,
                           "train.epochs=1"], env=e, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accs = []
    for k in (1, 2):
        metrics = json.loads((runs / f"patch-fold{k}" / "metrics.json").read_text())
        assert metrics["final_split"] == "valid" and 0.0 <= metrics["final"]["accuracy"] <= 1.0
        accs.append(metrics["final"]["accuracy"])
    summary = json.loads((runs / "patch-summary.json").read_text())
    final = summary["final"]
    assert final["mean"] == pytest.approx(np.mean(accs)) and final["std"] == pytest.approx(np.std(accs))
    assert summary["authors"]["epoch"] == 1 and summary["authors"]["epochs"] == 1  # one epoch: the final one
    assert summary["authors"]["mean"] == pytest.approx(np.mean(accs))
    assert "authors' number" in proc.stdout and "over 2 folds" in proc.stdout and "final models" in proc.stdout
    # finished folds are not trained again
    again = subprocess.run(["bash", str(REPO / "finetune/esc50/run.sh"), "scratch", "patch", *TINY],
                           env=e, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stderr


def write_metrics(run: Path, valid: list[float], final: float, final_split: str = "valid") -> None:
    """A hand-made RUN/metrics.json: one validation accuracy per epoch (1, 2, ...) and the final model's."""
    run.mkdir(parents=True, exist_ok=True)
    history = [{"step": 10 * e, "epoch": e, "split": "valid", "accuracy": a, "loss": 1.0}
               for e, a in enumerate(valid, 1)]
    doc = {"task": "finetune", "epochs": len(valid), "final": {"accuracy": final}, "final_split": final_split,
           "history": history}
    (run / "metrics.json").write_text(json.dumps(doc))


def test_esc50_summary_takes_the_best_fold_averaged_epoch_not_each_folds_best(tmp_path, capsys):
    curves = {"1": [0.25, 1.0, 0.5, 0.5],    # best epoch 2
              "2": [0.25, 0.5, 0.5, 1.0],    # best epoch 4
              "3": [0.25, 0.75, 1.0, 0.5]}   # best epoch 3; fold means per epoch: 0.25, 0.75, 0.667, 0.667
    for k, c in curves.items():
        write_metrics(tmp_path / f"patch-fold{k}", c, final=c[-1])
    summary_py = load_script("finetune/summary.py")
    assert summary_py.main(["esc50", str(tmp_path), "patch", "1", "2", "3", "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "s.json").read_text())
    a, f = s["authors"], s["final"]
    assert a["epoch"] == 2 and a["epochs"] == 4 and a["mean"] == pytest.approx(0.75)  # each fold's best: 1.0 on average
    assert a["per_fold"] == {"1": 1.0, "2": 0.5, "3": 0.75} and a["std"] == pytest.approx(np.std([1.0, 0.5, 0.75]))
    assert a["per_epoch_mean"] == pytest.approx({"1": 0.25, "2": 0.75, "3": 2 / 3, "4": 2 / 3})
    assert f["per_fold"] == {"1": 0.5, "2": 1.0, "3": 0.5} and f["mean"] == pytest.approx(2 / 3)
    assert f["std"] == pytest.approx(np.std([0.5, 1.0, 0.5]))
    assert "75.00% at epoch 2 of 4, over 3 folds" in out and "66.67 +- 23.57" in out

    # a tie between epochs goes to the first (np.argmax in get_esc_result.py); a strictly better later one wins
    write_metrics(tmp_path / "patch-fold1", [0.25, 1.0, 0.75, 0.5], final=0.5)  # epoch 3 ties epoch 2 at 0.75
    assert summary_py.esc50_summary(tmp_path, "patch", ["1", "2", "3"])["authors"]["epoch"] == 2
    write_metrics(tmp_path / "patch-fold1", [0.25, 1.0, 1.0, 0.5], final=0.5)
    assert summary_py.esc50_summary(tmp_path, "patch", ["1", "2", "3"])["authors"]["epoch"] == 3

    write_metrics(tmp_path / "patch-fold3", [0.5, 0.5], final=0.5)  # a fold trained for other epochs
    with pytest.raises(summary_py.SummaryError, match=r"patch-fold3.*epochs 1-2, but fold 1 after 1-4.*RERUN=1"):
        summary_py.esc50_summary(tmp_path, "patch", ["1", "2", "3"])
    proc = subprocess.run([PY, str(REPO / "finetune/summary.py"), "esc50", str(tmp_path), "patch", "1", "9"],
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "patch-fold9/metrics.json: not found" in proc.stderr


def test_speechcommands_summary_best_on_validation_beside_final(tmp_path, capsys):
    run = tmp_path / "frame"
    write_metrics(run, [0.5, 0.875, 0.875, 0.75], final=0.8, final_split="test")  # best/ saved after epoch 2
    (tmp_path / "best_test.json").write_text(json.dumps({"accuracy": 0.9, "num_clips": 10}))
    summary_py = load_script("finetune/summary.py")
    assert summary_py.main(["speechcommands", str(run), str(tmp_path / "best_test.json"),
                            "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["best"]["epoch"] == 2 and s["best"]["valid"] == 0.875 and s["best"]["test"] == 0.9
    assert s["final"] == {"epoch": 4, "valid": 0.75, "test": 0.8}
    assert "best on validation (epoch 2), authors" in out and "90.00" in out and "80.00" in out
    write_metrics(run, [0.5], final=0.8, final_split="valid")  # no test list: nothing to report as the authors do
    with pytest.raises(summary_py.SummaryError, match="not the test list"):
        summary_py.speechcommands_summary(run, tmp_path / "best_test.json")


# ---------------------------------------------------------------------------------------------------------------
# Speech Commands V2


def fake_speechcommands(root: Path) -> None:
    words = ["no", "up", "yes"]
    for i, w in enumerate(words):
        for spk in ("0a7c2a8d", "0b09edd3", "bb05582b", "c1d39ce8"):
            tone(root / w / f"{spk}_nohash_0.wav", 0.3, 16000, 300 + 100 * i)
    tone(root / "_background_noise_" / "white_noise.wav", 0.5, 16000, 900)
    tone(root / "up" / "ffffffff_nohash_1.wav", 0.3, 8000, 400)  # an unexpected sample rate
    (root / "validation_list.txt").write_text("no/0a7c2a8d_nohash_0.wav\nup/0a7c2a8d_nohash_0.wav\n"
                                              "yes/0a7c2a8d_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/0b09edd3_nohash_0.wav\nyes/0b09edd3_nohash_0.wav\n"
                                           "yes/deadbeef_nohash_0.wav\n")


def test_speechcommands_publisher_split(tmp_path, capsys):
    root = tmp_path / "speech_commands_v0.02"
    fake_speechcommands(root)
    out = tmp_path / "sc"
    text = run_main("finetune/speechcommands/prepare.py", ["--root", root, "--out", out], capsys)
    labels = read_label_csv(out / "labels.csv")
    assert labels.ids == ["no", "up", "yes"]
    keys = {s: sorted(str(Path(c.path).relative_to(root.resolve())) for c in read_json_list(out / f"{s}.json", labels))
            for s in ("train", "valid", "test")}
    assert keys["valid"] == ["no/0a7c2a8d_nohash_0.wav", "up/0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_0.wav"]
    assert keys["test"] == ["no/0b09edd3_nohash_0.wav", "yes/0b09edd3_nohash_0.wav"]
    assert len(keys["train"]) == 13 - 5 and not set(keys["train"]) & set(keys["valid"] + keys["test"])
    assert not any("_background_noise_" in k for k in keys["train"])
    for c in read_json_list(out / "train.json"):
        assert c.labels == [Path(c.path).parent.name]
    assert "missing on disk: 1" in text and "8000 Hz" in text and "the V2 release has 35" in text


def test_speechcommands_run_sh_reports_best_on_validation_and_final_on_test(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    fake_speechcommands(root)
    runs = tmp_path / "runs"
    e = dict(env(), SC_ROOT=str(root), DATA=str(tmp_path / "data"), RUNS=str(runs))
    cmd = ["bash", str(REPO / "finetune/speechcommands/run.sh"), "scratch", "frame", *TINY, "train.epochs=2"]
    proc = subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "frame"
    metrics = json.loads((run / "metrics.json").read_text())
    best_test = json.loads((run / "best_test.json").read_text())
    assert metrics["final_split"] == "test" and best_test["num_clips"] == 2  # the two test clips on disk
    valid = [h["accuracy"] for h in metrics["history"] if h["split"] == "valid"]
    summary = json.loads((runs / "frame-summary.json").read_text())
    assert summary["best"]["test"] == best_test["accuracy"] and summary["final"]["test"] == metrics["final"]["accuracy"]
    assert summary["best"]["valid"] == max(valid) and summary["best"]["epoch"] == 1 + valid.index(max(valid))
    assert summary["best"]["epoch"] == read_checkpoint_meta(run / "best").epoch  # the epoch best/ was saved at
    assert summary["final"]["epoch"] == 2 and "best on validation" in proc.stdout and "final (epoch 2)" in proc.stdout
    # a finished run is neither trained nor evaluated again; the summary is printed again
    before = (run / "best_test.json").stat().st_mtime_ns
    again = subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stderr and "best on validation" in again.stdout
    assert (run / "best_test.json").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------------------------
# AudioSet

MIDS = ["/m/09x0r", "/m/05zppz", "/m/0jbk"]


def fake_audioset(base: Path) -> tuple[Path, Path]:
    """Downloaded audio in the common naming styles, the three segment CSVs and class_labels_indices.csv."""
    audio, meta = base / "audio", base / "meta"
    meta.mkdir(parents=True)
    (meta / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/0jbk,"Animal"\n')
    head = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=3, num_segs=3, num_unique_labels=3, " \
           "num_positive_labels=4\n# YTID, start_seconds, end_seconds, positive_labels\n"
    (meta / "balanced_train_segments.csv").write_text(head + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '-0SdAVK79lg, 20.000, 30.000, "/m/0jbk"\n'
        'a_b-c_d-e_f, 0.000, 10.000, "/m/09x0r"\n'
        'MISSING0000, 10.000, 20.000, "/m/0jbk"\n'))
    (meta / "unbalanced_train_segments.csv").write_text(head + (
        '-0RWZT-miFs, 420.000, 430.000, "/m/05zppz"\n'
        'Yx1234567_8, 5.500, 15.500, "/m/0jbk,/m/09x0r"\n'))
    (meta / "eval_segments.csv").write_text(head + '--4gqARaEJE, 0.000, 10.000, "/m/0jbk"\n')
    tone(audio / "bal" / "--PJHxphWEs_30000.wav", 0.4, 16000, 300)  # start in ms
    tone(audio / "bal" / "--PJHxphWEs_70000.wav", 0.4, 16000, 350)  # another segment of the same video
    tone(audio / "bal" / "Y-0SdAVK79lg.flac", 0.4, 32000, 400)  # "Y" prefix, YTID only, 32 kHz
    tone(audio / "bal" / "a_b-c_d-e_f_0.000_10.000.wav", 0.4, 16000, 450)  # '_' inside the YTID, start_end
    tone(audio / "unbal" / "-0RWZT-miFs_420.wav", 0.4, 16000, 500)  # start in seconds
    tone(audio / "unbal" / "Yx1234567_8_5.500.wav", 0.4, 16000, 550)  # YTID starting with Y, no prefix
    tone(audio / "eval" / "--4gqARaEJE_0.wav", 0.4, 16000, 600)
    return audio, meta


def test_audioset_lists_naming_styles_missing_and_shards(tmp_path, capsys):
    audio, meta = fake_audioset(tmp_path / "as")
    out, shards = tmp_path / "data" / "audioset", tmp_path / "shards"
    text = run_main("pretrain/prepare_audioset.py",
                    ["--root", audio, "--csv-dir", meta, "--out", out, "--shards", shards], capsys)
    labels = read_label_csv(out / "class_labels_indices.csv")
    assert labels.ids == MIDS and labels.names[1] == "Male speech, man speaking"
    bal = read_json_list(out / "balanced_train.json", labels)
    assert [Path(c.path).name for c in bal] == ["--PJHxphWEs_30000.wav", "Y-0SdAVK79lg.flac",
                                                 "a_b-c_d-e_f_0.000_10.000.wav"]
    assert bal[0].labels == ["/m/09x0r", "/m/05zppz"]
    assert json.loads((out / "balanced_train.json").read_text())["data"][0]["labels"] == "/m/09x0r,/m/05zppz"
    unbal = read_json_list(out / "unbalanced_train.json", labels)
    assert [Path(c.path).name for c in unbal] == ["-0RWZT-miFs_420.wav", "Yx1234567_8_5.500.wav"]
    assert unbal[1].labels == ["/m/0jbk", "/m/09x0r"]
    assert [Path(c.path).name for c in read_json_list(out / "eval.json")] == ["--4gqARaEJE_0.wav"]
    assert (out / "missing.txt").read_text() == "balanced_train MISSING0000 10.000\n"
    assert "missing on disk: 1 segments" in text and "3 of 4 listed segments" in text and "32000 Hz" in text
    index = read_index(str(shards))
    assert index["num_clips"] == 5 and index["label_histogram"]["/m/09x0r"] == 3

    before = snapshot(out)
    run_main("pretrain/prepare_audioset.py", ["--root", audio, "--csv-dir", meta, "--out", out], capsys)
    assert snapshot(out) == before

    (meta / "eval_segments.csv").write_text("# a\n# b\n# c\n--4gqARaEJE, 0.000, 10.000, \"/m/unknown\"\n")
    with pytest.raises(DataError, match=r"eval_segments.csv, line 4: label '/m/unknown'"):
        load_script("pretrain/prepare_audioset.py").main(["--root", str(audio), "--csv-dir", str(meta),
                                                          "--out", str(out)])


def test_audioset20k_prepares_only_balanced_and_eval(tmp_path, capsys):
    audio, meta = fake_audioset(tmp_path / "as")
    out = tmp_path / "as20k"
    run_main("finetune/audioset20k/prepare.py", ["--root", audio, "--csv-dir", meta, "--out", out], capsys)
    assert sorted(p.name for p in out.glob("*.json")) == ["balanced_train.json", "eval.json"]
    assert len(read_json_list(out / "balanced_train.json")) == 3


def test_audioset20k_enhanced_list_relabels_our_clips(tmp_path, capsys):
    audio, meta = fake_audioset(tmp_path / "as")
    out = tmp_path / "as20k"
    enhanced = tmp_path / "balanced_train_data_type1_2_mean.json"
    # the PSLA list names the authors' files: one clip gains a label, one is not in it
    enhanced.write_text(json.dumps({"data": [
        {"wav": "/their/disk/Y--PJHxphWEs.wav", "labels": "/m/09x0r,/m/05zppz,/m/0jbk"},
        {"wav": "/their/disk/Ya_b-c_d-e_f.wav", "labels": "/m/09x0r"}]}))
    run_main("finetune/audioset20k/prepare.py", ["--root", audio, "--csv-dir", meta, "--out", out,
                                                 "--enhanced-list", enhanced], capsys)
    got = {Path(c.path).name: sorted(c.labels) for c in read_json_list(out / "balanced_train_enhanced.json")}
    assert got == {"--PJHxphWEs_30000.wav": ["/m/05zppz", "/m/09x0r", "/m/0jbk"],
                   "a_b-c_d-e_f_0.000_10.000.wav": ["/m/09x0r"]}
    assert all(Path(c.path).is_file() for c in read_json_list(out / "balanced_train_enhanced.json"))  # our files
    enhanced.write_text(json.dumps({"data": [{"wav": "/x/Y--PJHxphWEs.wav", "labels": "/m/nope"}]}))
    with pytest.raises(DataError, match=r"balanced_train_data_type1_2_mean.json.*/m/nope"):
        load_script("finetune/audioset20k/prepare.py").main(["--root", str(audio), "--csv-dir", str(meta), "--out",
                                                              str(out), "--enhanced-list", str(enhanced)])


# ---------------------------------------------------------------------------------------------------------------
# LibriSpeech, a folder of audio, and the pretraining launchers


def fake_librispeech(base: Path) -> Path:
    ls = base / "LibriSpeech"
    for s, (spk, chap) in zip(("train-clean-100", "train-clean-360", "train-other-500"),
                              ((19, 198), (100, 121669), (20, 205))):
        d = ls / s / str(spk) / str(chap)
        utts = [f"{spk}-{chap}-{u:04d}" for u in range(2)]
        for i, u in enumerate(utts):
            tone(d / f"{u}.flac", 0.5 + 0.25 * i, 16000, 200 + 30 * i + spk)
        lines = [f"{u} SOME WORDS" for u in utts] + ([f"{spk}-{chap}-0099 A LOST LINE"] if spk == 20 else [])
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return ls


def test_librispeech_unlabeled_list_hours_and_shards(tmp_path, capsys):
    fake_librispeech(tmp_path)
    out, shards = tmp_path / "ls", tmp_path / "shards_ls"
    text = run_main("pretrain/prepare_librispeech.py", ["--root", tmp_path, "--out", out, "--shards", shards], capsys)
    clips = read_json_list(out / "train.json")
    assert len(clips) == 6 and all(c.labels == [] for c in clips)
    assert "train-clean-360: 2 utterances" in text and "0.001 h" in text  # 3 x 1.25 s = 3.75 s
    assert (out / "missing.txt").read_text() == "train-other-500/20/205/20-205-0099\n"
    assert read_index(str(shards))["num_clips"] == 6
    with pytest.raises(DataError, match="dev-clean: subset not found"):
        load_script("pretrain/prepare_librispeech.py").main(["--root", str(tmp_path), "--subsets", "dev-clean",
                                                             "--out", str(out)])


def test_prepare_folder_then_single_gpu_launcher_pretrains(tmp_path, capsys):
    for i in range(6):
        tone(tmp_path / "mine" / f"sub{i % 2}" / f"c{i}.wav", 0.7, 22050, 200 + 50 * i)
    tone(tmp_path / "mine" / "tiny.wav", 0.01, 16000, 300)  # shorter than one window: left out
    out = tmp_path / "lists"
    text = run_main("pretrain/prepare_folder.py", ["--root", tmp_path / "mine", "--out", out,
                                                   "--valid-fraction", "0.34"], capsys)
    assert len(read_json_list(out / "train.json")) == 4 and len(read_json_list(out / "valid.json")) == 2
    assert "1 clips shorter than 25 ms" in text
    run_dir = tmp_path / "pt"
    e = dict(env(), RUN_DIR=str(run_dir))
    cmd = ["bash", str(REPO / "pretrain/run_single_gpu.sh"), "patch", "tiny", *TINY, "model.mask_patch=0.5",
           f"data.train=[{out / 'train.json'}]", "train.steps=2", "train.device=cpu"]
    proc = subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "final").is_dir() and json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    dry = subprocess.run(cmd, env=dict(e, DRY_RUN="1"), capture_output=True, text=True, cwd=tmp_path)
    assert "--resume" in dry.stdout  # a second launch continues the run


def test_multi_gpu_and_slurm_launch_commands(tmp_path):
    e = dict(env(), DRY_RUN="1", NGPU="4", RUN_DIR=str(tmp_path / "r"))
    out = subprocess.run(["bash", str(REPO / "pretrain/run_multi_gpu.sh"), "frame", "data.batch_size=6"],
                         env=e, capture_output=True, text=True, check=True).stdout
    assert "torch.distributed.run --standalone --nproc_per_node=4 -m ssast pretrain" in out
    assert "configs/pretrain/frame_base.yaml" in out and "data.batch_size=6" in out
    e = dict(env(), DRY_RUN="1", SLURM_NNODES="2", SLURM_JOB_ID="77", GPUS_PER_NODE="8", RDZV_HOST="node01",
             REPO=str(REPO), RUN_DIR=str(tmp_path / "r"))
    out = subprocess.run(["bash", str(REPO / "pretrain/run_slurm.sbatch"), "patch", "small"],
                         env=e, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    for part in ("srun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_id=77", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=node01:29500", "configs/pretrain/patch_small.yaml"):
        assert part in out
    bad = subprocess.run(["bash", str(REPO / "pretrain/run_single_gpu.sh"), "pixel"], env=e, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "patch or frame" in bad.stderr


# ---------------------------------------------------------------------------------------------------------------
# VoxCeleb1, custom data, the other run scripts, configs


def test_voxceleb1_identification_split(tmp_path, capsys):
    root = tmp_path / "vox1"
    lines = []
    for s, spk in enumerate(("id10001", "id10002")):
        for v, vid in enumerate(("1zcIwhmdeo4", "7w0IBEWc9Qw")):
            for n in (1, 2):
                rel = f"{spk}/{vid}/{n:05d}.wav"
                tone(root / "wav" / rel, 0.3, 16000, 200 + 100 * s + 20 * v + n)
                lines.append(f"{1 if v == 0 else n + 1} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "vox"
    text = run_main("finetune/voxceleb1/prepare.py", ["--root", root, "--out", out], capsys)
    labels = read_label_csv(out / "labels.csv")
    assert labels.ids == ["id10001", "id10002"]
    sizes = {s: len(read_json_list(out / f"{s}.json", labels)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 4, "valid": 2, "test": 2}
    for c in read_json_list(out / "test.json"):
        assert c.labels == [Path(c.path).parts[-3]] and Path(c.path).name == "00002.wav"
    assert "2 speakers" in text
    (root / "iden_split.txt").write_text("4 id10001/x/00001.wav\n")
    with pytest.raises(DataError, match=r"iden_split.txt, line 1"):
        load_script("finetune/voxceleb1/prepare.py").main(["--root", str(root), "--out", str(out)])


def test_custom_folders_random_split_and_csv_split(tmp_path, capsys):
    for c in ("bird", "car"):
        for i in range(10):
            tone(tmp_path / "mine" / c / f"{c}{i}.wav", 0.2, 16000, 300 + 40 * i + (500 if c == "car" else 0))
    out = tmp_path / "custom"
    run_main("finetune/custom/prepare.py", ["--root", tmp_path / "mine", "--out", out, "--seed", "1"], capsys)
    labels = read_label_csv(out / "labels.csv")
    assert labels.ids == ["bird", "car"]
    splits = {s: read_json_list(out / f"{s}.json", labels) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    assert sorted(c.labels[0] for c in splits["valid"]) == ["bird", "car"]  # stratified
    first = snapshot(out)
    run_main("finetune/custom/prepare.py", ["--root", tmp_path / "mine", "--out", out, "--seed", "1"], capsys)
    assert snapshot(out) == first

    csv_path = tmp_path / "mine" / "list.csv"
    csv_path.write_text("path,label,split\nbird/bird0.wav,bird,train\ncar/car0.wav,car,train\n"
                        "bird/bird1.wav,bird,test\ncar/car1.wav,car,valid\n")
    run_main("finetune/custom/prepare.py", ["--csv", csv_path, "--out", tmp_path / "c2"], capsys)
    test = read_json_list(tmp_path / "c2" / "test.json")
    assert [Path(c.path).name for c in test] == ["bird1.wav"] and test[0].labels == ["bird"]
    csv_path.write_text("bird/bird0.wav,bird,holdout\n")
    with pytest.raises(DataError, match=r"list.csv, line 1: split 'holdout'"):
        load_script("finetune/custom/prepare.py").main(["--csv", str(csv_path), "--out", str(tmp_path / "c3")])


def test_run_scripts_build_the_recipe_commands(tmp_path):
    data = tmp_path / "d"
    for name in ("train.json", "balanced_train.json", "labels.csv"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("{}")
    e = dict(env(), DRY_RUN="1", DATA=str(data), RUNS=str(tmp_path / "runs"))

    def dry(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / script), *args], env=e, capture_output=True, text=True)

    out = dry("finetune/audioset20k/run.sh", "scratch", "frame").stdout
    assert "audioset20k_patch.yaml" in out and "model.fshape=128" in out and "model.tstride=1" in out
    assert f"data.test=\\[{data}/eval.json\\]" in out or f"data.test=[{data}/eval.json]" in out
    assert "balanced_train.json" in out
    (data / "balanced_train_enhanced.json").write_text("{}")  # prepared with --enhanced-list: the authors' labels
    assert "balanced_train_enhanced.json" in dry("finetune/audioset20k/run.sh", "scratch", "patch").stdout
    (data / "balanced_train_enhanced.json").unlink()
    out = dry("finetune/voxceleb1/run.sh", "scratch", "patch").stdout
    assert "voxceleb1_frame.yaml" in out and "model.fshape=16" in out and "model.fstride=10" in out
    weights = tmp_path / "deit.pth"
    weights.write_bytes(b"x")
    out = dry("finetune/speechcommands/run.sh", f"imagenet:{weights}", "patch").stdout
    assert "speechcommands_ast_imagenet.yaml" in out and "model.pooling=cls" in out
    assert f"model.init=imagenet:{weights}" in out
    assert "evaluate" in out and "/ast_imagenet/best" in out  # then the best-on-validation model on the test list
    out = dry("finetune/speechcommands/run.sh", "scratch", "patch").stdout
    assert "speechcommands_patch.yaml" in out and "/patch/best" in out
    data_esc = tmp_path / "esc"
    for name in ("fold1_train.json", "labels.csv"):
        (data_esc / name).parent.mkdir(parents=True, exist_ok=True)
        (data_esc / name).write_text("{}")
    e_esc = dict(e, DATA=str(data_esc), FOLDS="1")
    out = subprocess.run(["bash", str(REPO / "finetune/esc50/run.sh"), f"imagenet:{weights}", "patch"], env=e_esc,
                         capture_output=True, text=True).stdout
    assert "esc50_ast_imagenet.yaml" in out and "ast_imagenet-fold1" in out  # AST's own ESC-50 recipe
    out = subprocess.run(["bash", str(REPO / "finetune/esc50/run.sh"), "scratch", "patch"], env=e_esc,
                         capture_output=True, text=True).stdout
    assert "esc50_patch.yaml" in out and "patch-fold1" in out
    bad = dry("finetune/speechcommands/run.sh", f"imagenet:{weights}", "frame")
    assert bad.returncode == 2 and "16x16 patches" in bad.stderr
    bad = dry("finetune/esc50/run.sh", str(tmp_path / "no_such_ckpt"), "patch")
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_recipe_configs_load_and_point_at_the_prepared_lists():
    vox = load_config(REPO / "configs/finetune/voxceleb1_frame.yaml")
    assert vox.model.is_frame and vox.data.train == ["data/voxceleb1/train.json"]
    assert vox.data.label_csv == "data/voxceleb1/labels.csv" and vox.model.input_tdim == vox.audio.target_length
    for tokens in ("patch", "frame"):
        for size in ("tiny", "small", "base"):
            cfg = load_config(REPO / f"configs/pretrain/{tokens}_{size}.yaml")
            assert cfg.data.train == ["data/shards/audioset", "data/shards/librispeech"]
            assert cfg.data.train_weights == []  # mixed in proportion to the clip counts, as concatenation
    esc = load_config(REPO / "configs/finetune/esc50_patch.yaml")
    assert esc.data.train == ["data/esc50/fold1_train.json"] and esc.data.label_csv == "data/esc50/labels.csv"
    ast = load_config(REPO / "configs/finetune/esc50_ast_imagenet.yaml")  # AST's egs/esc50/run_esc.sh, ImageNet alone
    assert (ast.optim.lr, ast.train.epochs, ast.data.batch_size, ast.optim.warmup_steps) == (1e-4, 25, 48, 0)
    assert (ast.optim.schedule, ast.optim.step_start, ast.optim.step_every, ast.optim.step_factor) == ("step", 5, 1, 0.85)
    assert (ast.augment.freqm, ast.augment.timem, ast.augment.mixup, ast.augment.noise) == (24, 96, 0.0, False)
    assert (ast.model.fstride, ast.model.tstride, ast.model.pooling, ast.model.num_prefix) == (10, 10, "cls", 2)
    assert ast.audio.target_length == 512 and ast.model.init.startswith("imagenet:")
    assert (ast.audio.norm_mean, ast.audio.norm_std) == (esc.audio.norm_mean, esc.audio.norm_std)


def test_prepare_script_help_and_one_line_error(tmp_path):
    e = env()
    proc = subprocess.run([PY, str(REPO / "finetune/speechcommands/prepare.py"), "--help"], env=e,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--root" in proc.stdout
    proc = subprocess.run([PY, str(REPO / "finetune/speechcommands/prepare.py"), "--root", str(tmp_path / "x")],
                          env=e, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such folder" in proc.stderr


def test_custom_run_sh_computes_normalisation_once_and_trains_frames(tmp_path):
    for c in ("bird", "car"):
        for i in range(10):
            tone(tmp_path / "mine" / c / f"{c}{i}.wav", 0.6, 16000, 300 + 40 * i + (500 if c == "car" else 0))
    data, runs = tmp_path / "data", tmp_path / "runs"
    e = dict(env(), CUSTOM_ROOT=str(tmp_path / "mine"), DATA=str(data), RUNS=str(runs))
    proc = subprocess.run(["bash", str(REPO / "finetune/custom/run.sh"), "scratch", "frame", *TINY, "train.epochs=1"],
                          env=e, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((data / "norm_stats.json").read_text())
    cfg = load_config(runs / "frame" / "config.yaml")
    assert cfg.audio.norm_mean == pytest.approx(stats["norm_mean"]) and stats["norm_mean"] != -4.2677393
    assert (cfg.model.fshape, cfg.model.tshape, cfg.model.tstride) == (128, 2, 1)
    assert cfg.data.test == [f"{data}/test.json"] and cfg.model.init == "scratch"
    assert "accuracy" in json.loads((runs / "frame" / "metrics.json").read_text())["final"]
