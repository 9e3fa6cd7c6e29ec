"""The HEAR API (ssast.hear) against the specification's shapes, dtypes and timestamp rules and hear-validator's checks,
on pretraining and fine-tuned, patch and frame checkpoints, for audio shorter than, equal to and longer than the window."""
import numpy as np
import pytest
import torch

from ssast.evaluate import hear
from ssast.audio.fbank import kaldi_fbank, max_samples
from ssast.audio.features import normalize
from ssast.audio.io import AudioError
from ssast.config import AudioConfig, ConfigError, ModelConfig
from ssast.serve.inference import embed_files
from ssast.models.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from ssast.models.classifier import SSASTClassifier
from ssast.models.pretrain import SSASTPretrainModel
from conftest import make_wav

SR = 16000
WINDOW = 128  # frames: the tiny models' input length, 1.295 s of audio
AUDIO = AudioConfig(num_mel_bins=64, target_length=WINDOW, norm_mean=-5.0, norm_std=4.0)
# (name, kind, config overrides, expected hop in ms)
MODELS = {
    "patch-pretrain": ("pretrain", dict(), 40.0),  # time stride 16 frames: 4 phases of 4 frames
    "patch-finetuned": ("classifier", dict(fstride=10, tstride=10), 50.0),  # stride 10: 2 phases of 5 frames
    "frame-pretrain": ("pretrain", dict(fshape=64, tshape=2), 20.0),
    "frame-finetuned": ("classifier", dict(fshape=64, tshape=2, tstride=1), 10.0),
}
# shorter than the window, 0.5 s, hear-validator's three lengths, exactly the window, several windows
LENGTHS = [0.5, 1.07, max_samples(WINDOW) / SR, 1.98, 4.0]


def tiny_config(**kw) -> ModelConfig:
    base = dict(size="custom", dim=32, depth=2, heads=2, input_fdim=64, input_tdim=WINDOW, mask_patch=0.5)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hear")
    torch.manual_seed(0)
    paths = {}
    for name, (kind, kw, _) in MODELS.items():
        cfg = tiny_config(**kw)
        model = SSASTPretrainModel(cfg) if kind == "pretrain" else SSASTClassifier(cfg, 3)
        paths[name] = save_checkpoint(root / name, model, CheckpointMeta(kind, cfg, audio=AUDIO))
    return paths


def noise(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """hear-validator's test input: white noise in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * SR), generator=g) * 2 - 1


@pytest.mark.parametrize("name", MODELS)
def test_conforms_to_the_hear_api(checkpoints, name):
    model = hear.load_model(str(checkpoints[name]))
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.sample_rate == SR and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 32
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    hop = MODELS[name][2]
    for seconds in LENGTHS:
        audio = noise(2, seconds)
        length_ms = 1000 * audio.shape[1] / SR
        emb, ts = hear.get_timestamp_embeddings(audio, model)
        assert emb.dtype == ts.dtype == torch.float32 and emb.device == ts.device == audio.device
        assert emb.ndim == 3 and emb.shape[0] == 2 and emb.shape[2] == model.timestamp_embedding_size
        assert ts.shape == emb.shape[:2] and torch.equal(ts[0], ts[1])
        assert torch.isfinite(emb).all() and (emb.abs().sum(-1) > 0).all()  # every timestamp filled in
        diffs = ts[0].diff().double()
        # evenly spaced (hear-validator: no deviation over 1 ms), at the hop the design promises, within HEAR's 50 ms
        assert torch.allclose(diffs, torch.full_like(diffs, hop), atol=1e-3) and hop <= hear.MAX_HOP_MS
        # the first centre within one hop of 0, the last within one hop of the end and never beyond it
        assert 0 <= ts[0, 0] <= hop
        assert length_ms - hop <= ts[0, -1] <= length_ms
        scene = hear.get_scene_embeddings(audio, model)
        assert scene.dtype == torch.float32 and scene.device == audio.device
        assert scene.shape == (2, model.scene_embedding_size) and torch.isfinite(scene).all()


@pytest.mark.parametrize("name", ["patch-pretrain", "frame-finetuned"])
def test_same_sound_gives_the_same_embedding_anywhere_in_the_batch(checkpoints, name):
    model = hear.load_model(str(checkpoints[name]), batch_size=3)  # chunks that split a clip's windows
    audio = noise(3, 3.1, seed=1)
    order = [2, 0, 1]
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    emb_p, _ = hear.get_timestamp_embeddings(audio[order], model)
    torch.testing.assert_close(emb_p, emb[order], atol=1e-5, rtol=1e-5)
    scene = hear.get_scene_embeddings(audio, model)
    torch.testing.assert_close(hear.get_scene_embeddings(audio[order], model), scene[order], atol=1e-5, rtol=1e-5)
    alone = hear.get_scene_embeddings(audio[1:2], hear.load_model(str(checkpoints[name]), batch_size=64))
    torch.testing.assert_close(alone[0], scene[1], atol=1e-5, rtol=1e-5)
    # and a different sound gives a different embedding
    other = hear.get_scene_embeddings(noise(1, 3.1, seed=2) * 0.1, model)
    assert (other[0] - scene[1]).norm() > 1e-2 * scene[1].norm()


@pytest.mark.parametrize("name", ["patch-pretrain", "patch-finetuned"])
def test_scene_embedding_is_what_ssast_embed_gives(checkpoints, tmp_path, name):
    """A clip within the window: exactly our inference's clip embedding (same features, padding and pooling)."""
    wav = tmp_path / "clip.wav"
    data = make_wav(wav, 0.8, kind="speechlike", subtype="FLOAT")[:, 0]
    (npy,) = embed_files(str(checkpoints[name]), [str(wav)], str(tmp_path / "emb"))
    scene = hear.get_scene_embeddings(torch.from_numpy(data)[None], hear.load_model(str(checkpoints[name])))
    np.testing.assert_allclose(scene[0].numpy(), np.load(npy), atol=1e-5, rtol=1e-5)


def test_long_clip_scene_embedding_averages_its_windows_by_real_frames(checkpoints):
    model = hear.load_model(str(checkpoints["patch-pretrain"]))
    hop = 160  # samples per frame: window 1 starts at frame 128, sample 128 * 160
    audio = noise(1, (WINDOW * hop + 8000) / SR, seed=3)
    first = audio[:, : max_samples(WINDOW)]  # frames 0..127
    tail = audio[:, WINDOW * hop :]  # frames 128.. (48 frames)
    expected = (WINDOW * hear.get_scene_embeddings(first, model) + 48 * hear.get_scene_embeddings(tail, model)) / 176
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model), expected, atol=1e-4, rtol=1e-4)


def local_patch_model(**kw) -> hear.HearModel:
    """A patch model whose token outputs depend only on their own patch (no blocks, zero positions): its timestamp
    embeddings are a direct readout of the audio under each token."""
    torch.manual_seed(0)
    clf = SSASTClassifier(tiny_config(depth=0, **kw), 2)
    with torch.no_grad():
        clf.encoder.pos_embed.zero_()
    return hear.HearModel(clf, AUDIO)


def test_each_timestamp_is_the_centre_of_its_tokens_audio():
    model = local_patch_model()
    audio = noise(1, 3.3, seed=4)  # 328 frames: three windows per phase
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    fbank = kaldi_fbank(audio, num_mel_bins=64)
    checked = 0
    for k in range(0, ts.shape[1]):
        # a 16-frame token's centre is the mean of its frames' centres: 10 ms * (first + 7.5) + 12.5 ms
        first = (ts[0, k].item() - 12.5) / 10 - 7.5
        assert first == round(first)
        first = int(first)
        if first < 0 or first + 16 > fbank.shape[1]:
            continue  # tokens over the padding at either end
        x = normalize(fbank[:, first : first + 16], AUDIO.norm_mean, AUDIO.norm_std)
        with torch.no_grad():
            ref = model.classifier.encoder(x)[:, model.classifier.encoder.num_prefix :].mean(dim=1)
        torch.testing.assert_close(emb[:, k], ref, atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked > 60


@pytest.mark.parametrize("kw", [dict(), dict(tstride=10)])
def test_timestamp_embeddings_move_with_the_audio(kw):
    """Audio delayed by one hop gives the same embeddings one timestamp later, across windows and phases."""
    model = local_patch_model(**kw)
    audio = noise(1, 3.3, seed=5)
    shift = model.hop_frames * 160
    delayed = torch.cat([noise(1, shift / SR, seed=6), audio], dim=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    emb_d, ts_d = hear.get_timestamp_embeddings(delayed, model)
    assert ts_d.shape[1] == ts.shape[1] + 1 and torch.equal(ts_d[:, : ts.shape[1]], ts)
    inside = slice(3, ts.shape[1] - 5)  # tokens clear of the padding at both ends
    torch.testing.assert_close(emb_d[:, 4 : ts.shape[1] - 4], emb[:, inside], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(emb[:, 10], emb[:, 11], atol=1e-3)  # neighbouring timestamps do differ


def test_hop_choice():
    assert [hear.hop_frames_for(s, 10.0, 50.0) for s in (16, 10, 12, 2, 1, 7)] == [4, 5, 4, 2, 1, 1]
    model = local_patch_model()
    fast = hear.HearModel(model.classifier, AUDIO, max_hop_ms=1000)
    assert (fast.phases, fast.hop_ms) == (1, 160.0)  # one pass: the token stride
    emb, ts = hear.get_timestamp_embeddings(noise(1, 2.0), fast)
    emb4, ts4 = hear.get_timestamp_embeddings(noise(1, 2.0), model)
    assert torch.equal(ts4[:, ::4], ts) and torch.allclose(emb4[:, ::4], emb, atol=1e-5)  # phase 0 is that pass


def test_layers_option(checkpoints):
    path = str(checkpoints["patch-finetuned"])
    audio = noise(2, 1.5)
    both = hear.load_model(path, layers=[1, 2])
    assert both.scene_embedding_size == both.timestamp_embedding_size == 64
    assert hear.load_model(path, layers="all").blocks == [0, 1]
    emb, _ = hear.get_timestamp_embeddings(audio, both)
    last, _ = hear.get_timestamp_embeddings(audio, hear.load_model(path, layers=[2]))
    torch.testing.assert_close(emb[..., 32:], last)
    final, _ = hear.get_timestamp_embeddings(audio, hear.load_model(path))
    assert not torch.allclose(last, final, atol=1e-3)  # block outputs are taken before the final norm
    assert hear.get_scene_embeddings(audio, both).shape == (2, 64)
    for bad in ([0], [3], "first", [], [1.5]):
        with pytest.raises(ConfigError, match="block numbers from 1 to 2"):
            hear.load_model(path, layers=bad)


def test_load_model_errors_are_one_clear_line(checkpoints, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "w.pth").write_bytes(b"")
    cases = [
        (str(tmp_path / "missing"), "checkpoint directory not found"),
        (str(tmp_path / "notes"), "not an ssast checkpoint"),
        ("", "give an ssast checkpoint folder"),
        (str(tmp_path / "w.pth"), "ssast import-checkpoint"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as e:
            hear.load_model(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="max_hop_ms"):
        hear.load_model(str(checkpoints["frame-pretrain"]), max_hop_ms=0)
    model = hear.load_model(str(checkpoints["frame-pretrain"]) + "/model.json")  # the metadata file names it too
    with pytest.raises(AudioError, match="shorter than one 25 ms analysis window"):
        hear.get_scene_embeddings(torch.zeros(1, 399), model)
    with pytest.raises(AudioError, match=r"shape \(n_sounds, n_samples\)"):
        hear.get_timestamp_embeddings(torch.zeros(16000), model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_models_device(checkpoints):
    model = hear.load_model(str(checkpoints["patch-finetuned"]))
    audio = noise(2, 2.5)
    cpu_emb, cpu_ts = hear.get_timestamp_embeddings(audio, model)
    cpu_scene = hear.get_scene_embeddings(audio, model)
    model.to("cuda")
    emb, ts = hear.get_timestamp_embeddings(audio.cuda(), model)
    scene = hear.get_scene_embeddings(audio.cuda(), model)
    assert emb.is_cuda and ts.is_cuda and scene.is_cuda
    assert emb.dtype == ts.dtype == scene.dtype == torch.float32
    torch.testing.assert_close(emb.cpu(), cpu_emb, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(scene.cpu(), cpu_scene, atol=2e-3, rtol=2e-3)
    assert torch.equal(ts.cpu(), cpu_ts)
