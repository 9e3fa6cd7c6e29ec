"""The installed torch / torchaudio / torchvision are the pinned set and load; a set that cannot load is one line.

A mismatch is simulated faithfully: a stand-in package placed first on PYTHONPATH raises, at import, the error a
torchaudio (or torchvision) built for another torch raises, and the real `ssast` command runs in a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from ssast.environment import COMPILED_STACK, fix_command, pinned_versions
from conftest import make_wav

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2", "audio.target_length=64",
        "model.input_tdim=64", "data.batch_size=2", "train.progress=none", "train.precision=fp32"]
# What torchaudio 2.11.1 raises under torch 2.11.0 (its library needs a symbol that torch does not export).
TORCHAUDIO_ERROR = ("OSError('/venv/lib/torchaudio/lib/libtorchaudio.so: undefined symbol: "
                    "torch_exception_get_what_without_backtrace')")
TORCHVISION_ERROR = "RuntimeError('operator torchvision::nms does not exist')"


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, sep, version = dep.partition("==")
        if name.strip() in COMPILED_STACK:
            assert sep and version.count(".") == 2 and "*" not in version, (
                f"pyproject.toml must pin {name.strip()} exactly (==X.Y.Z), found {dep!r}")
            pins[name.strip()] = version.strip()
    return pins


def test_installed_stack_is_the_pinned_set():
    pins = pyproject_pins()
    assert set(pins) == set(COMPILED_STACK), f"pyproject.toml pins only {sorted(pins)}"
    installed = {name: metadata.version(name) for name in COMPILED_STACK}
    drift = {n: (installed[n], pins[n]) for n in COMPILED_STACK if installed[n].split("+")[0] != pins[n]}
    assert not drift, ("installed versions differ from the pins in pyproject.toml: "
                       + ", ".join(f"{n} {have} (pinned {want})" for n, (have, want) in drift.items())
                       + f"; reinstall with: {fix_command()}")
    assert pinned_versions() == pins  # the one-line message quotes these, read from the installed metadata


def test_torchaudio_extension_loads_and_is_the_fbank_reference():
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as K

    assert torchaudio._extension._IS_TORCHAUDIO_EXT_AVAILABLE, "torchaudio's compiled library did not load"
    from ssast.audio.fbank import kaldi_fbank

    wave = torch.sin(torch.arange(16000) * 0.05) * 0.3
    ref = K.fbank(wave[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                  num_mel_bins=128, dither=0.0, frame_shift=10)
    assert torch.allclose(kaldi_fbank(wave), ref, atol=1e-4)


def test_mel_banks_and_spec_augment_equal_torchaudio_bit_for_bit():
    """The two pieces taken over from torchaudio (so training needs no compiled torchaudio) stay identical to it."""
    import torch
    import torchaudio.functional as AF
    from torchaudio.compliance.kaldi import get_mel_banks

    from ssast.audio.augment import spec_augment
    from ssast.audio.fbank import kaldi_mel_banks

    for bins, n_fft, rate, low in [(128, 512, 16000.0, 20.0), (80, 400, 8000.0, 0.0), (23, 1024, 44100.0, 20.0)]:
        ref, _ = get_mel_banks(bins, n_fft, rate, low, 0.0, 100.0, -500.0, 1.0)
        assert torch.equal(kaldi_mel_banks(bins, n_fft, rate, low), ref)
    for freqm, timem, frames in [(24, 96, 512), (48, 48, 128), (0, 20, 64), (200, 2000, 50)]:
        x = torch.randn(7, frames, 128)
        torch.manual_seed(3)
        spec = x.transpose(1, 2).unsqueeze(1)
        if freqm:
            spec = AF.mask_along_axis_iid(spec, min(freqm, 128), 0.0, axis=2)
        spec = AF.mask_along_axis_iid(spec, min(timem, frames), 0.0, axis=3)
        torch.manual_seed(3)
        assert torch.equal(spec_augment(x, freqm, timem), spec.squeeze(1).transpose(1, 2))


def _broken(tmp_path: Path, package: str, error: str) -> dict[str, str]:
    """An environment whose `import PACKAGE` fails the way a build for another torch fails."""
    fake = tmp_path / f"broken_{package}" / package
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {error}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO)]), HF_HUB_OFFLINE="1")
    return env


def _ssast(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssast", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def _assert_one_line_fix(proc: subprocess.CompletedProcess, package: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert f"{package} {metadata.version(package)} cannot be loaded with torch {metadata.version('torch')}" in line
    assert line.endswith(fix_command()) and all(f"'{n}==" in line for n in COMPILED_STACK), line


def test_broken_torchaudio_leaves_16khz_training_working_and_resampling_is_one_line(tmp_path):
    for i in range(4):
        make_wav(tmp_path / "ok" / f"a{i}.wav", 0.8, sr=16000, freq=300 + 50 * i, seed=i)
        make_wav(tmp_path / "other" / f"b{i}.wav", 0.8, sr=22050, freq=300 + 50 * i, seed=i)
    env = _broken(tmp_path, "torchaudio", TORCHAUDIO_ERROR)

    # Features, masking and SpecAugment are ours: pretraining on 16 kHz audio needs no torchaudio at all.
    run = tmp_path / "run"
    ok = _ssast(env, "pretrain", *TINY, f"data.train=[{tmp_path / 'ok'}]", "train.steps=2", f"train.run_dir={run}",
                "model.mask_patch=0.5", "augment.freqm=8", "augment.timem=8", "data.num_workers=0")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((run / "final" / "model.json").read_text())["kind"] == "pretrain"

    # A clip at another rate needs torchaudio's resampler: one line with the versions and the fix, also when the
    # failure happens inside a DataLoader worker process.
    for workers in (0, 1):
        bad = _ssast(env, "stats", *TINY, f"data.train=[{tmp_path / 'other'}]", f"data.num_workers={workers}")
        _assert_one_line_fix(bad, "torchaudio")


def test_broken_torchvision_is_one_line_before_any_model_import(tmp_path):
    env = _broken(tmp_path, "torchvision", TORCHVISION_ERROR)
    proc = _ssast(env, "pretrain", "--dry-run", *TINY)
    _assert_one_line_fix(proc, "torchvision")


@pytest.mark.parametrize("name", COMPILED_STACK)
def test_fix_command_names_each_exact_pin(name):
    assert f"'{name}=={pyproject_pins()[name]}'" in fix_command()
