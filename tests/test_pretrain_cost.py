"""The pretraining-cost study: its options are the configurations they name, and its table reads the curves right."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import pretrain_cost as study  # noqa: E402


class _Corpus:  # the lists a run's config names (never read here)
    labels, pool, test = Path("l.csv"), Path("pool.json"), Path("test.json")

    def train_subset(self, k):
        return Path(f"train_{k}.json")


@pytest.mark.parametrize("option, visible, k, mode, ratio", [
    ("one-pass", "all", 1, "auto", 0.5),  # the demo's: all tokens, half masked
    ("one-pass-inverse", "all", 1, "inverse_block", 0.5),
    ("one-pass-r0.75", "all", 1, "auto", 0.75),
    ("visible-k1", "visible", 1, "auto", 0.75),
    ("visible-k16", "visible", 16, "auto", 0.75),
    ("visible-k8-inverse", "visible", 8, "inverse_block", 0.75),
    ("visible-k8-r0.9", "visible", 8, "auto", 0.9),
])
def test_options_are_the_configs_they_name(option, visible, k, mode, ratio, tmp_path):
    cfg = study.pretrain_config(_Corpus(), "frame", option, 2, tmp_path / "run", 300, 60)
    m = cfg.model
    assert (m.pretrain_encoder, m.masks_per_clip, m.mask_mode, m.mask_patch) == (visible, k, mode, ratio)
    assert (m.fshape, m.tshape, m.dim, m.depth) == (128, 2, 96, 4)  # the demo's tiny frame encoder
    assert (cfg.train.steps, cfg.train.probe_every, cfg.train.seed) == (300, 60, 2)
    assert cfg.optim.lr == 1e-3  # the demo's peak lr, except for the lr options
    assert (cfg.optim.optimizer, cfg.optim.weight_decay) == ("adam", 5e-7)  # the authors' Adam, as the demo's
    assert not cfg.augment.noise and cfg.augment.time_shift == 10  # the shift the noise option turns on
    assert cfg.data.probe_train == ["train_4.json"] and cfg.data.batch_size == 16
    # the probes fall on logged steps, so their training seconds are exact
    assert cfg.train.probe_every % cfg.train.log_every == 0


@pytest.mark.parametrize("option, changed", [
    ("one-pass-lr2e-3", {"optim.lr": 2e-3}),
    ("one-pass-lr5e-4", {"optim.lr": 5e-4}),
    ("two-pass", {"model.two_pass": True}),  # the authors' second pass
    ("one-pass-noise", {"augment.noise": True}),  # with the default time shift of up to 10 frames
    ("one-pass-adamw", {"optim.optimizer": "adamw", "optim.weight_decay": 0.05}),
])
def test_a_one_pass_option_changes_only_what_it_names(option, changed, tmp_path):
    base = study.pretrain_config(_Corpus(), "frame", "one-pass", 2, tmp_path / "a", 300, 60)
    other = study.pretrain_config(_Corpus(), "frame", option, 2, tmp_path / "a", 300, 60)
    for key, value in changed.items():
        section, name = key.split(".")
        was = getattr(getattr(base, section), name)
        assert getattr(getattr(other, section), name) == value != was
        setattr(getattr(other, section), name, was)
    assert other == base


def test_studies_side_by_side_fine_tune_the_same_seed_in_folders_of_their_own(tmp_path, monkeypatch):
    # two options of seed 0 run at once finished together and fine-tuned into one folder: one deleted the other's
    folders = []
    monkeypatch.setattr(study, "run_finetune", lambda run, overrides: folders.append(run) or {"accuracy": 0.5})
    for pid in (101, 102):
        monkeypatch.setattr(study.os, "getpid", lambda pid=pid: pid)
        assert study.finetune_4(tmp_path, _Corpus(), "speech", "frame", "scratch", 0) == 0.5
    assert len(set(folders)) == 2 and all(f.parent == tmp_path / "speech" for f in folders)


@pytest.mark.parametrize("option, copies", [("one-pass", 16), ("two-pass", 32), ("visible-k8", 128)])
def test_masked_copies_per_step_count_every_mask_the_encoder_sees(option, copies):
    assert study.masked_copies_per_step(option) == copies


def _run(task, option, seed, times, accs):
    return {"kind": "run", "task": task, "shape": "frame", "option": option, "seed": seed, "steps": 100,
            "train_s": times[-1], "loader_clips_per_step": 16, "masked_copies_per_step": 16,
            "curve": [{"step": i, "train_s": t, "best": a, "best_layer": 1, "last": a - 0.01}
                      for i, (t, a) in enumerate(zip(times, accs))]}


def _keep_final(study_dir, option, seed, step):
    """A kept final encoder of a speech frame run, as far as the study reads it (its step count)."""
    final = study.run_folder(study_dir, "speech", "frame", option, seed) / "final"
    final.mkdir(parents=True)
    (final / "model.json").write_text(json.dumps({"kind": "pretrain", "step": step}))
    return final


def test_summary_times_are_read_off_the_mean_curve_over_seeds():
    rows = [{"kind": "floor", "task": "speech", "shape": "frame", "option": "random", "seed": s, "best": b,
             "last": b} for s, b in ((0, 0.30), (1, 0.34))]  # floor 0.32: the +10 line is 0.42
    rows += [_run("speech", "one-pass", 0, [10, 20, 30], [0.30, 0.35, 0.40]),
             _run("speech", "one-pass", 1, [12, 22, 32], [0.30, 0.37, 0.40]),  # mean final 0.40 at 31 s
             _run("speech", "visible-k8", 0, [5, 10, 15], [0.38, 0.44, 0.50]),
             _run("speech", "visible-k8", 1, [7, 12, 17], [0.40, 0.42, 0.48])]  # means 0.39, 0.43, 0.49
    rows[-1]["finetune"] = 0.5
    rows.append({"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": 1,
                 "finetune": 0.45})
    got = {r["option"]: r for r in study.summary(rows)}
    one, vis = got["one-pass"], got["visible-k8"]
    assert one["floor"] == pytest.approx(0.32) and vis["probe_best"] == pytest.approx(0.49)
    assert vis["beats_floor_by"] == pytest.approx(0.17)
    assert vis["s_to_floor_plus_10"] == pytest.approx(11.0)  # the mean curve passes 0.42 at its 2nd point
    assert vis["s_to_one_pass_final"] == pytest.approx(11.0) and one["one_pass_s"] == pytest.approx(31.0)
    assert one["s_to_floor_plus_10"] is None  # never reached: the table says so
    assert vis["finetune_4"] == 0.5 and vis["scratch_4"] == 0.45 and one["finetune_4"] is None
    table = study.table(study.summary(rows))
    assert "not reached" in table and "| speech | frame | visible-k8 | 2 |" in table
    # with no one-pass run of that task and shape, the table does not claim the one-pass final was missed
    alone = study.table(study.summary([r for r in rows if r.get("option") != "one-pass"]))
    assert "no one-pass run" in alone and "not reached" not in alone
    # an option run on fewer seeds is set against the one-pass final of those seeds: seed 1's 0.40 at 32 s, not the
    # 0.42 of seeds 0-2
    more = rows + [_run("speech", "one-pass", 2, [11, 21, 31], [0.30, 0.40, 0.46]),
                   _run("speech", "visible-k1", 1, [5, 10, 15], [0.39, 0.41, 0.45])]
    got = {r["option"]: r for r in study.summary(more)}
    assert got["visible-k1"]["s_to_one_pass_final"] == pytest.approx(10.0)
    assert got["visible-k1"]["one_pass_s"] == pytest.approx(32.0)
    assert got["visible-k8"]["s_to_one_pass_final"] == pytest.approx(11.0)  # 0.43 >= seeds 0-1's final 0.40


def test_rows_are_replaced_per_cell_and_survive_as_json(tmp_path):
    results = tmp_path / "r.json"
    study.add(results, _run("speech", "one-pass", 0, [1], [0.1]))
    study.add(results, _run("speech", "one-pass", 1, [1], [0.2]))
    rows = study.add(results, {**_run("speech", "one-pass", 0, [1], [0.3]), "finetune": 0.4})
    assert [(r["seed"], r["curve"][0]["best"], r.get("finetune")) for r in rows] == [(1, 0.2, None), (0, 0.3, 0.4)]
    assert json.loads(results.read_text()) == rows


@pytest.mark.parametrize("recipe, decay, head_only", [("template", 1.0, 0), ("llrd", 0.75, 0), ("lp-ft", 1.0, 100)])
def test_recipes_are_the_template_plus_what_they_name(recipe, decay, head_only):
    cfg = study._config("finetune", study.finetune_overrides(_Corpus(), "frame", "scratch", 1, recipe))
    o = cfg.optim
    assert (o.layer_decay, o.head_only_steps, o.lr, cfg.train.min_steps) == (decay, head_only, 5e-4, 400)
    assert (cfg.model.fshape, cfg.model.tshape, cfg.train.seed) == (128, 2, 1)
    assert cfg.data.train == ["train_4.json"]


def test_recipe_summary_pairs_each_seed_with_its_scratch():
    rows = [{"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": s, "finetune": f}
            for s, f in ((0, 0.30), (1, 0.40), (2, 0.50))]
    rows += [{**_run("speech", "one-pass", s, [10], [0.3]), "finetune": f} for s, f in ((0, 0.20), (1, 0.45))]
    rows += [{"kind": "recipe", "task": "speech", "shape": "frame", "option": "one-pass", "seed": s,
              "recipe": "lp-ft", "finetune": f} for s, f in ((0, 0.35), (1, 0.40), (2, 0.56))]
    got = {r["recipe"]: r for r in study.recipe_summary(rows)}
    # the template ran on seeds 0 and 1 only: scratch is their mean, 0.35, and seed 0 lost by 10 points
    assert got["template"]["seeds"] == 2 and got["template"]["scratch"] == pytest.approx(0.35)
    assert got["template"]["minus_scratch"] == pytest.approx(-0.025)
    assert got["template"]["worst_seed_minus_scratch"] == pytest.approx(-0.10)
    assert got["lp-ft"]["seeds"] == 3 and got["lp-ft"]["minus_scratch"] == pytest.approx(0.11 / 3, abs=1e-4)
    assert got["lp-ft"]["worst_seed_minus_scratch"] == pytest.approx(0.0)
    assert "| speech | frame | one-pass | lp-ft | 3 | 43.7 (35-56) | 40.0 | +3.7 | +0.0 |" in study.recipe_table(
        list(got.values()))


def test_a_row_is_found_again_by_the_cell_the_study_asks_for():
    """Resuming skips what is done: the cell a row reads as is the cell the study looks up, with or without a recipe."""
    run = _run("speech", "one-pass", 2, [10], [0.3])
    assert study._cells(run) == study.cell("run", "speech", "frame", "one-pass", 2)
    recipe = {"kind": "recipe", "task": "speech", "shape": "frame", "option": "one-pass", "seed": 2, "recipe": "llrd"}
    assert study._cells(recipe) == study.cell("recipe", "speech", "frame", "one-pass", 2, "llrd")
    assert study._cells(recipe) != study._cells({**recipe, "recipe": "lp-ft"})


def test_kept_encoders_along_the_run_are_all_kept(tmp_path):
    """--finetune-every keeps a step checkpoint at every P-th probe point; pruning must not take any of them."""
    cfg = study.pretrain_config(_Corpus(), "patch", "visible-k8", 0, tmp_path / "run", 300, 30, keep_every=60)
    assert cfg.train.ckpt_every == 60 and cfg.train.keep_last >= 300 // 60 - 1  # steps 60..240, the final apart
    assert study.pretrain_config(_Corpus(), "patch", "visible-k8", 0, tmp_path / "run", 300, 30).train.ckpt_every \
        == 300  # off: no step checkpoints before the end


def _kept(run: Path, step: int) -> Path:
    from ssast.train.checkpoints import TRAINER_STATE, step_dir

    d = step_dir(run, step)
    d.mkdir(parents=True)
    (d / TRAINER_STATE).write_text("{}")
    return d


def test_finetuning_along_the_run_records_each_kept_encoder_once(tmp_path, monkeypatch):
    run = study.run_folder(tmp_path, "speech", "frame", "one-pass", 0)
    row = {**_run("speech", "one-pass", 0, [10, 20, 30, 40], [0.3, 0.4, 0.5, 0.6]), "steps": 3, "finetune": 0.7}
    for step in (1, 3):  # probe points 1 and 3 (the run's last step holds the final encoder)
        _kept(run, step)
    calls = []

    def fake_finetune(work, corpus, task, shape, init, seed, recipe="template"):
        calls.append(Path(init).name)
        return 0.25

    monkeypatch.setattr(study, "finetune_4", fake_finetune)
    results = tmp_path / "r.json"
    rows = study.finetune_along(tmp_path, results, None, row)
    assert calls == ["step-00000001"]  # the final's fine-tune is the row's own, not run again
    assert rows[-1]["finetune_curve"] == [{"step": 1, "train_s": 20, "finetune": 0.25},
                                          {"step": 3, "train_s": 40, "finetune": 0.7}]
    assert not (run / "checkpoints").exists()  # each fine-tuned encoder is deleted, and the emptied folder
    # resuming: a point on record is not fine-tuned again even if its checkpoint survived an interruption
    _kept(run, 1)
    study.finetune_along(tmp_path, results, None, rows[-1])
    assert calls == ["step-00000001"] and not (run / "checkpoints").exists()


def test_the_summary_says_when_finetuning_along_the_run_first_beats_scratch():
    rows = [{"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": s, "finetune": f}
            for s, f in ((0, 0.40), (1, 0.50))]  # scratch 0.45 on the seeds with a curve
    for seed, fts in ((0, [0.30, 0.45, 0.60]), (1, [0.40, 0.50, 0.40])):  # means 0.35, 0.475, 0.50
        run = _run("speech", "one-pass", seed, [10, 20, 30], [0.3, 0.3, 0.3])
        run["finetune_curve"] = [{"step": i, "train_s": t, "finetune": f} for i, (t, f) in enumerate(zip([10, 20, 30],
                                                                                                          fts))]
        rows.append(run)
    def column(line):  # the table's "s to fine-tune > scratch" cell
        head, _, row = study.table([line]).splitlines()
        return row.split("|")[head.split("|").index(" s to fine-tune > scratch ")].strip()

    line = study.summary(rows)[0]
    assert line["finetune_points"] == 3 and line["s_to_beat_scratch"] == pytest.approx(20.0)
    assert column(line) == "20"
    rows[-1]["finetune_curve"][-1]["finetune"] = rows[-2]["finetune_curve"][-1]["finetune"] = 0.1
    rows[-1]["finetune_curve"][1]["finetune"] = 0.40  # now the mean never passes 0.45
    line = study.summary(rows)[0]
    assert line["s_to_beat_scratch"] is None and column(line) == "not reached"
    assert column({**line, "finetune_points": 0}) == ""  # no curve recorded: nothing claimed
    for run in rows[-2:]:  # the final encoder alone fine-tuned (no --finetune-every): it cannot say when it won
        run["finetune_curve"] = run["finetune_curve"][-1:]
        run["finetune_curve"][0]["finetune"] = 0.9
    line = study.summary(rows)[0]
    assert line["finetune_points"] == 1 and line["s_to_beat_scratch"] is None and column(line) == ""


def test_an_option_is_set_against_the_floor_and_scratch_of_its_own_seeds():
    rows = [{"kind": "floor", "task": "events", "shape": "patch", "option": "random", "seed": s, "best": b, "last": b}
            for s, b in ((0, 0.30), (1, 0.50))]
    rows += [{"kind": "scratch", "task": "events", "shape": "patch", "option": "scratch", "seed": s, "finetune": f}
             for s, f in ((0, 0.20), (1, 0.60))]
    one = {**_run("events", "one-pass", 0, [10, 20], [0.35, 0.45]), "shape": "patch", "finetune": 0.40}
    both = [{**_run("events", "visible-k8", s, [10, 20], [0.5, 0.6]), "shape": "patch", "finetune": 0.5}
            for s in (0, 1)]
    got = {r["option"]: r for r in study.summary(rows + [one] + both)}
    # seed 0 alone: its floor 0.30 and scratch 0.20, not the means over both seeds (0.40, 0.40)
    assert got["one-pass"]["floor"] == pytest.approx(0.30) and got["one-pass"]["scratch_4"] == pytest.approx(0.20)
    assert got["one-pass"]["beats_floor_by"] == pytest.approx(0.15)
    assert got["visible-k8"]["floor"] == pytest.approx(0.40) and got["visible-k8"]["scratch_4"] == pytest.approx(0.40)


def test_finetune_and_scratch_are_averaged_over_the_same_seeds():
    rows = [{"kind": "scratch", "task": "events", "shape": "frame", "option": "scratch", "seed": 0, "finetune": 0.30}]
    rows += [{**_run("events", "one-pass", s, [10, 20], [0.4, 0.5]), "finetune": f} for s, f in ((0, 0.40), (1, 0.90))]
    line = study.summary(rows)[0]
    # seed 1 has no scratch row: it must not lift the fine-tune mean above a scratch mean it is absent from
    assert line["finetune_4"] == pytest.approx(0.40) and line["scratch_4"] == pytest.approx(0.30)
    assert line["finetune_seeds"] == 1
    # with no scratch at all, the fine-tune is still reported, over every seed that has one, and nothing is compared
    alone = study.summary(rows[1:])[0]
    assert alone["finetune_4"] == pytest.approx(0.65) and alone["scratch_4"] is None and alone["finetune_seeds"] == 2


def test_a_rerun_run_drops_the_recipes_and_refits_of_the_encoder_it_replaces(tmp_path, monkeypatch):
    """Recipe and refit rows belong to one encoder: pretraining a cell again must fine-tune them again, from the new
    one."""
    results, work = tmp_path / "r.json", tmp_path / "work"
    old = {"kind": "recipe", "task": "speech", "shape": "frame", "option": "one-pass", "seed": 0, "recipe": "llrd",
           "finetune": 0.9}
    other = {**old, "seed": 1, "finetune": 0.8}  # another seed's encoder: untouched
    old_refit = {"kind": "refit", "task": "speech", "shape": "frame", "option": "one-pass", "seed": 0,
                 "ft_seed": 1000, "finetune": 0.9}
    scratch_refit = {**old_refit, "option": "scratch", "finetune": 0.2}  # scratch has no encoder to replace
    kept = [{"kind": "floor", "task": "speech", "shape": "frame", "option": "random", "seed": 0, "best": 0.3,
             "last": 0.3}, {"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": 0,
                            "finetune": 0.3}]
    results.write_text(json.dumps(kept + [old, other, old_refit, scratch_refit]))  # seed 0's run row was removed
    _keep_final(work / "r", "one-pass", 0, 100)
    tuned = []
    monkeypatch.setattr(study, "corpus_for", lambda work, task: _Corpus())
    monkeypatch.setattr(study, "seconds_per_step", lambda *a: 0.1)
    monkeypatch.setattr(study, "pretrain_run", lambda *a: _run("speech", "one-pass", 0, [10], [0.5]))
    monkeypatch.setattr(study, "finetune_along", lambda work, results, corpus, row: study.load_rows(results))
    monkeypatch.setattr(study, "plot", lambda rows, png: png)

    def fake_finetune(work, corpus, task, shape, init, seed, recipe="template"):
        tuned.append(recipe)
        return 0.4

    monkeypatch.setattr(study, "finetune_4", fake_finetune)
    monkeypatch.setattr(sys, "argv", ["pretrain_cost.py", "--work", str(work), "--results", str(results), "--tasks",
                                      "speech", "--shapes", "frame", "--options", "one-pass", "--seeds", "0",
                                      "--finetune", "--recipes", "llrd"])
    study.main()
    rows = {study._cells(r): r for r in study.load_rows(results)}
    assert tuned == ["template", "llrd"]  # the new encoder's own fine-tune, then the recipe again
    assert rows[study.cell("recipe", "speech", "frame", "one-pass", 0, "llrd")]["finetune"] == 0.4
    assert rows[study.cell("recipe", "speech", "frame", "one-pass", 1, "llrd")]["finetune"] == 0.8
    assert study.cell("refit", "speech", "frame", "one-pass", 0, None, 1000) not in rows
    assert rows[study.cell("refit", "speech", "frame", "scratch", 0, None, 1000)]["finetune"] == 0.2


def test_steps_give_every_option_the_same_steps_without_calibrating(tmp_path, monkeypatch):
    """--steps replaces the seconds budget: no option is timed, and each run gets exactly that many steps."""
    results, work = tmp_path / "r.json", tmp_path / "work"
    results.write_text(json.dumps([{"kind": "floor", "task": "speech", "shape": "patch", "option": "random",
                                    "seed": 0, "best": 0.3, "last": 0.3}]))
    asked = []

    def no_timing(*a):
        raise AssertionError("--steps must not calibrate")

    def fake_run(work, corpus, task, shape, option, seed, steps, points, ft_every):
        asked.append((option, steps, points))
        return {**_run(task, option, seed, [steps], [0.5]), "shape": shape}

    monkeypatch.setattr(study, "corpus_for", lambda work, task: _Corpus())
    monkeypatch.setattr(study, "seconds_per_step", no_timing)
    monkeypatch.setattr(study, "pretrain_run", fake_run)
    monkeypatch.setattr(study, "plot", lambda rows, png: png)
    monkeypatch.setattr(sys, "argv", ["pretrain_cost.py", "--work", str(work), "--results", str(results), "--tasks",
                                      "speech", "--shapes", "patch", "--options", "one-pass", "one-pass-noise",
                                      "--seeds", "0", "--steps", "1500", "--points", "3"])
    study.main()
    assert asked == [("one-pass", 1500, 3), ("one-pass-noise", 1500, 3)]


def test_refits_fine_tune_the_encoder_and_scratch_with_the_same_new_seeds_once(tmp_path, monkeypatch):
    """--finetune-seeds 3: the final encoder and scratch are each fine-tuned with two more train.seeds, the same two,
    and a second call (a resumed study) fine-tunes nothing again."""
    results, work = tmp_path / "r.json", tmp_path / "work"
    results.write_text(json.dumps([
        {"kind": "floor", "task": "speech", "shape": "frame", "option": "random", "seed": 4, "best": 0.3, "last": 0.3},
        {"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": 4, "finetune": 0.4},
        {**_run("speech", "one-pass", 4, [10], [0.5]), "finetune": 0.35}]))
    final = _keep_final(work / "r", "one-pass", 4, 100)
    tuned = []

    def fake_finetune(work, corpus, task, shape, init, seed, recipe="template"):
        tuned.append((init, seed))
        return 0.5 if init == str(final) else 0.45

    monkeypatch.setattr(study, "corpus_for", lambda work, task: _Corpus())
    monkeypatch.setattr(study, "finetune_4", fake_finetune)
    monkeypatch.setattr(study, "finetune_along", lambda work, results, corpus, row: study.load_rows(results))
    monkeypatch.setattr(study, "plot", lambda rows, png: png)
    monkeypatch.setattr(sys, "argv", ["pretrain_cost.py", "--work", str(work), "--results", str(results), "--tasks",
                                      "speech", "--shapes", "frame", "--options", "one-pass", "--seeds", "4",
                                      "--finetune", "--finetune-seeds", "3"])
    study.main()
    assert sorted(tuned) == sorted([("scratch", 1004), (str(final), 1004), ("scratch", 2004), (str(final), 2004)])
    study.main()
    assert len(tuned) == 4
    line, = study.refit_summary(study.load_rows(results))
    # fine-tunes 0.35, 0.5, 0.5 against scratch 0.4, 0.45, 0.45: each +0.05 but the first, -0.05
    assert (line["seed"], line["finetunes"], line["first_minus_scratch"]) == (4, 3, -0.05)
    assert line["minus_scratch"] == pytest.approx(0.05 / 3, abs=1e-4)


def test_refit_summary_pairs_fine_tunes_by_seed_and_gives_their_spread():
    """Only fine-tuning seeds that both the start and scratch have are compared, pair by pair; the standard error is
    that of the paired differences, the spreads those of single fine-tunes."""
    base = {"task": "speech", "shape": "frame", "seed": 1}
    rows = [{**_run("speech", "one-pass", 1, [10], [0.5]), "finetune": 0.40},
            {"kind": "scratch", "option": "scratch", "finetune": 0.30, **base}]
    for ft, pre, scr in ((1001, 0.50, 0.36), (2001, 0.30, 0.24)):
        rows += [{"kind": "refit", "option": "one-pass", "ft_seed": ft, "finetune": pre, **base},
                 {"kind": "refit", "option": "scratch", "ft_seed": ft, "finetune": scr, **base}]
    rows.append({"kind": "refit", "option": "one-pass", "ft_seed": 3001, "finetune": 0.9, **base})  # no scratch
    line, = study.refit_summary(rows)
    # differences 0.10, 0.14, 0.06: mean 0.10, sd 0.04, SE 0.04 / sqrt(3)
    assert line["finetunes"] == 3
    assert line["minus_scratch"] == pytest.approx(0.10)
    assert line["se"] == pytest.approx(0.04 / 3 ** 0.5, abs=1e-4)
    assert line["sd_pretrained"] == pytest.approx(0.10) and line["sd_scratch"] == pytest.approx(0.06)
    assert line["first_minus_scratch"] == pytest.approx(0.10)
    assert "| speech | frame | one-pass | 1 | 3 | 40.0 | 30.0 | +10.0 (2.3) | +10.0 | 10.0 / 6.0 |" in \
        study.refit_table([line])


def test_an_encoder_of_another_run_in_the_folder_is_never_fine_tuned(tmp_path, monkeypatch, capsys):
    """Encoders live under WORK/<results name>, apart from other studies'; and a kept encoder whose step count is not
    the run row's (a run of another length left there) is neither fine-tuned, refitted nor given recipes."""
    results, work = tmp_path / "r.json", tmp_path / "work"
    results.write_text(json.dumps([
        {"kind": "floor", "task": "speech", "shape": "frame", "option": "random", "seed": 0, "best": 0.3, "last": 0.3},
        {"kind": "scratch", "task": "speech", "shape": "frame", "option": "scratch", "seed": 0, "finetune": 0.4},
        _run("speech", "one-pass", 0, [10], [0.5])]))  # 100 steps, not fine-tuned yet
    _keep_final(work, "one-pass", 0, 100)  # the right length, but not under this study's folder
    final = _keep_final(work / "r", "one-pass", 0, 1500)  # this study's folder, another run's length
    tuned = []
    monkeypatch.setattr(study, "corpus_for", lambda work, task: _Corpus())
    monkeypatch.setattr(study, "finetune_4", lambda *a, **k: tuned.append(a) or 0.9)
    monkeypatch.setattr(study, "plot", lambda rows, png: png)
    monkeypatch.setattr(sys, "argv", ["pretrain_cost.py", "--work", str(work), "--results", str(results), "--tasks",
                                      "speech", "--shapes", "frame", "--options", "one-pass", "--seeds", "0",
                                      "--finetune", "--finetune-seeds", "3", "--recipes", "llrd"])
    study.main()
    assert tuned == []
    assert f"{final} holds an encoder of 1500 steps, not this run's 100" in capsys.readouterr().err
    assert "finetune" not in next(r for r in study.load_rows(results) if r["kind"] == "run")
