"""Parameter groups (layer-wise lr decay, head multiplier, no decay for norms/biases) and lr schedules."""
import math

import pytest
import torch

from ssast.config import ModelConfig, OptimConfig
from ssast.models.classifier import SSASTClassifier
from ssast.train.optim import LRSchedule, build_optimizer, param_groups


def tiny_classifier():
    cfg = ModelConfig(size="custom", dim=32, depth=3, heads=2, input_tdim=64)
    return SSASTClassifier(cfg, 5)


def scale_of(model, groups, name):
    p = dict(model.named_parameters())[name]
    return next(g for g in groups if any(q is p for q in g["params"]))


def test_layer_decay_and_head_multiplier():
    model = tiny_classifier()
    groups = param_groups(model, OptimConfig(layer_decay=0.5, head_lr_mult=10.0, weight_decay=0.01))
    head = scale_of(model, groups, "head.1.weight")
    last = scale_of(model, groups, "encoder.blocks.2.attn.qkv.weight")
    first = scale_of(model, groups, "encoder.blocks.0.attn.qkv.weight")
    stem = scale_of(model, groups, "encoder.patch_embed.proj.weight")
    assert head["lr_scale"] == pytest.approx(10.0)
    assert last["lr_scale"] == pytest.approx(0.5) and first["lr_scale"] == pytest.approx(0.125)
    assert stem["lr_scale"] == pytest.approx(0.0625)
    # no weight decay for biases, norms and the positional embedding / prefix tokens
    assert scale_of(model, groups, "encoder.blocks.0.norm1.weight")["weight_decay"] == 0.0
    assert scale_of(model, groups, "encoder.pos_embed")["weight_decay"] == 0.0
    assert first["weight_decay"] == 0.01
    # every trainable parameter is in exactly one group
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))


def test_schedule_sets_group_lrs():
    model = tiny_classifier()
    cfg = OptimConfig(lr=1e-3, warmup_steps=4, schedule="cosine", head_lr_mult=2.0)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = LRSchedule(opt, cfg, total_steps=100, steps_per_epoch=10)
    assert sched.apply(0) == pytest.approx(1e-3 / 4)  # warm-up
    assert sched.apply(50) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs[-1] == pytest.approx(2 * lrs[0])  # the head's group


def test_step_and_plateau_schedules():
    model = tiny_classifier()
    step = OptimConfig(lr=1.0, warmup_steps=0, schedule="step", step_start=2, step_every=2, step_factor=0.5)
    s = LRSchedule(build_optimizer(model, step, torch.device("cpu")), step, total_steps=100, steps_per_epoch=10)
    # epochs 0,1 full lr; 2,3 halved; 4,5 quartered (the authors' MultiStepLR milestones)
    assert [s.factor(e * 10) for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    plat = OptimConfig(lr=1.0, warmup_steps=0, schedule="plateau", plateau_factor=0.5)
    p = LRSchedule(build_optimizer(model, plat, torch.device("cpu")), plat, total_steps=100, steps_per_epoch=1)
    for v in (0.3, 0.4, 0.35, 0.39):  # two checks without improvement: patience 2 keeps the lr
        p.report_metric(v)
    assert p.factor(10) == 1.0
    p.report_metric(0.4)  # the third in a row (equal is no improvement): halve, as the authors' scheduler does
    assert p.factor(10) == 0.5
    state = p.state_dict()
    q = LRSchedule(build_optimizer(model, plat, torch.device("cpu")), plat, total_steps=100, steps_per_epoch=1)
    q.load_state_dict(state)
    assert q.factor(11) == 0.5


def test_plateau_rule_equals_torch_reduce_lr_on_plateau():
    """The authors' ReduceLROnPlateau(mode="max", factor=0.5, patience=2) as the oracle, on noisy accuracy curves."""
    model = tiny_classifier()
    cfg = OptimConfig(lr=1.0, warmup_steps=0, schedule="plateau", plateau_factor=0.5)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        ours = LRSchedule(build_optimizer(model, cfg, torch.device("cpu")), cfg, total_steps=100, steps_per_epoch=1)
        ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=2)
        curve = (torch.linspace(0.1, 0.5, 40) ** 0.3 + 0.02 * torch.randn(40, generator=gen)).tolist()
        changes = 0
        for v in curve:
            ours.report_metric(v)
            ref.step(v)
            assert ours.factor(1) == pytest.approx(ref_opt.param_groups[0]["lr"])
            changes += ours.factor(1) != 1.0
        assert changes  # the curves do plateau: the rule was exercised


def test_head_only_steps_train_the_head_alone_then_warm_the_encoder_up():
    """LP-FT: for head_only_steps the encoder does not move (weight decay included), the head does; then the
    encoder's lr warms up from zero over warmup_steps while the head's schedule goes on."""
    torch.manual_seed(0)
    model = tiny_classifier()
    cfg = OptimConfig(optimizer="adamw", lr=1e-2, weight_decay=0.05, warmup_steps=2, head_only_steps=3)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = LRSchedule(opt, cfg, total_steps=10, steps_per_epoch=5)
    encoder0 = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head0 = model.head[1].weight.clone()
    x = torch.randn(4, 64, 128)  # (batch, frames, mel bins)
    y = torch.tensor([0, 1, 2, 3])
    for step in range(3):
        assert sched.apply(step) == pytest.approx(1e-2 * min(1.0, (step + 1) / 2))
        assert {g["lr"] for g in opt.param_groups if not g["head"]} == {0.0}
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.equal(v, encoder0[k]) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(model.head[1].weight, head0)
    sched.apply(3)  # the encoder's first step: half its lr (warm-up of 2), the head at full lr
    assert [g["lr"] for g in opt.param_groups if not g["head"]] == pytest.approx([5e-3, 5e-3])
    assert [g["lr"] for g in opt.param_groups if g["head"]] == pytest.approx([1e-2, 1e-2])
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, encoder0["blocks.0.attn.qkv.weight"])
    assert sched.encoder_factor(4) == 1.0


def test_without_head_only_steps_the_groups_stay_as_before():
    """Checkpoints made before head_only_steps existed resume: its groups split the head off only when it is set."""
    model = tiny_classifier()
    plain = param_groups(model, OptimConfig(weight_decay=0.01))
    assert len(plain) == 2 and not any(g["head"] for g in plain)  # decayed and not, as always
    lpft = param_groups(model, OptimConfig(weight_decay=0.01, head_only_steps=5))
    assert len(lpft) == 4 and sum(len(g["params"]) for g in lpft if g["head"]) == 4  # LayerNorm + Linear


def test_head_only_steps_is_a_fine_tuning_setting():
    from ssast.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="optim.head_only_steps"):
        load_config(None, ["task=pretrain", "optim.head_only_steps=10"])
    with pytest.raises(ConfigError, match="optim.head_only_steps must be at least 0"):
        load_config(None, ["task=finetune", "optim.head_only_steps=-1"])
