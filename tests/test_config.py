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
    r = cfg.model.resolved()
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
    # the same overlap is fine for fine-tuning
    cfg = load_config(None, ["task=finetune", "model.fstride=10", "model.tstride=10"])
    assert cfg.model.resolved().fstride == 10


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) >= 15
    for f in files:
        cfg = load_config(f)
        assert cfg.task in ("pretrain", "finetune"), f
