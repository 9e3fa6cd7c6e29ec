"""Config loading: YAML + dotted overrides, type checks and impossible combinations name the key and the file."""
import pytest

from ssast.config import Config, ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "task: finetune\noptim:\n  lr: 2.5e-4\n")
    cfg = load_config(p, ["data.batch_size=12", "model.size=tiny", "optim.betas=[0.9,0.99]"])
    assert isinstance(cfg, Config)
    assert cfg.task == "finetune" and cfg.optim.lr == 2.5e-4
    assert cfg.data.batch_size == 12 and cfg.optim.betas == [0.9, 0.99]
    r = cfg.model
    assert (r.dim, r.depth, r.heads) == (192, 12, 3) and (r.fstride, r.tstride) == (16, 16)


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "optim:\n  lrr: 1e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "optim.lrr" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "data:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size.*integer"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        load_config(None, ["model.pooling=max"])


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="non-overlapping"):
        load_config(None, ["task=pretrain", "model.fstride=10", "model.tstride=10"])
    with pytest.raises(ConfigError, match="mask_mode=cluster"):
        load_config(None, ["model.fshape=128", "model.tshape=2", "model.mask_mode=cluster"])
    with pytest.raises(ConfigError, match="audio.target_length"):
        load_config(None, ["model.input_tdim=512"])
    with pytest.raises(ConfigError, match="model.masks_per_clip"):
        load_config(None, ["model.masks_per_clip=0"])
    with pytest.raises(ConfigError, match="model.block_sizes"):
        load_config(None, ["model.mask_mode=inverse_block", "model.block_sizes=[]"])
    # inverse blocks (spans of frames) are fine for frame models, unlike clusters
    cfg = load_config(None, ["model.fshape=128", "model.tshape=2", "model.mask_mode=inverse_block"])
    assert cfg.model.mask_mode == "inverse_block" and cfg.model.block_sizes == [5]
    # the same overlap is fine for fine-tuning
    cfg = load_config(None, ["task=finetune", "model.fstride=10", "model.tstride=10"])
    assert cfg.model.fstride == 10


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) >= 15
    for f in files:
        cfg = load_config(f)
        assert cfg.task in ("pretrain", "finetune"), f


def test_model_input_size_follows_the_audio_settings(tmp_path):
    """One source: audio.target_length / num_mel_bins set the model's input; a different explicit value is refused."""
    cfg = load_config(write(tmp_path, "audio:\n  target_length: 512\n  num_mel_bins: 64\nmodel:\n  fshape: 16\n"),
                      task="finetune")
    assert (cfg.model.input_tdim, cfg.model.input_fdim) == (512, 64)
    assert load_config(None, ["audio.target_length=128"], task="finetune").model.input_tdim == 128
    both = ["audio.target_length=128", "model.input_tdim=128"]
    assert load_config(None, both, task="finetune").model.input_tdim == 128
    with pytest.raises(ConfigError, match="set audio.target_length alone"):
        load_config(None, ["audio.target_length=128", "model.input_tdim=256"], task="finetune")


def test_model_config_is_resolved_once_at_construction():
    from ssast.config import ModelConfig

    m = ModelConfig(size="small", fshape=128, tshape=2, tstride=1)
    assert (m.dim, m.depth, m.heads, m.fstride, m.tstride) == (384, 12, 6, 128, 1)
    custom = ModelConfig(size="custom", dim=64, depth=2, heads=4)
    assert (custom.dim, custom.fstride, custom.tstride) == (64, 16, 16)
    # a checkpoint's stored config comes back equal (resolution is idempotent)
    import dataclasses

    from ssast.config import from_dict
    assert from_dict(ModelConfig, dataclasses.asdict(m)) == m


def test_settings_that_would_silently_do_nothing_are_refused():
    with pytest.raises(ConfigError, match="mixup_partner=dataset mixes waveforms"):
        load_config(None, ["augment.mixup=0.5", "augment.mixup_partner=dataset", "augment.mixup_domain=fbank"])
    # the working combinations load
    load_config(None, ["augment.mixup=0.5", "augment.mixup_partner=dataset", "augment.mixup_domain=wave"])
    load_config(None, ["augment.mixup=0.5", "augment.mixup_partner=batch", "augment.mixup_domain=fbank"])


def test_run_configs_written_by_older_versions_still_load(tmp_path):
    """audio.fbank_on was written into every run's config.yaml but never read: old runs must still load/resume."""
    cfg = load_config(write(tmp_path, "audio:\n  fbank_on: auto\n  target_length: 256\n"), task="finetune")
    assert cfg.audio.target_length == 256 and not hasattr(cfg.audio, "fbank_on")
    with pytest.raises(ConfigError, match="unknown key audio.fbank_onn"):
        load_config(write(tmp_path, "audio:\n  fbank_onn: auto\n"))


def test_dataset_mixup_with_shards_is_refused(tmp_path):
    """Shards are streams: a dataset mixup partner cannot be drawn, and the run would silently train without mixup."""
    from ssast.data.loader import build_loader
    from ssast.data.manifest import DataError
    from ssast.data.shard_writer import prepare_shards
    from conftest import make_wav

    make_wav(tmp_path / "audio" / "a.wav", 0.5)
    make_wav(tmp_path / "audio" / "b.wav", 0.5, freq=300)
    prepare_shards(str(tmp_path / "audio"), str(tmp_path / "shards"), workers=1, progress=False)
    cfg = load_config(None, [f"data.train=[{tmp_path / 'shards'}]", "augment.mixup=0.5", "augment.mixup_partner=dataset",
                             "model.mask_patch=0.5", "audio.target_length=64", "data.num_workers=0"])
    with pytest.raises(DataError, match="mixup_partner=dataset needs clip lists or folders, not shards"):
        build_loader(cfg, "train")
    cfg.augment.mixup_partner = "batch"
    build_loader(cfg, "train")  # the batch partner works with shards
