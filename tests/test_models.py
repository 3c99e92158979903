"""Every registered architecture gets the same checks, on tiny inputs."""

import pytest
import torch

from brainseg.errors import CheckpointError, ConfigError
from brainseg.train.checkpoint import load_checkpoint, save_checkpoint
from brainseg.train.models.registry import MODELS, build_model

TINY = {"unet": {"base_channels": 8, "depth": 3}, "fpn": {"encoder": "resnet18"}, "resunet": {"encoder": "resnet18"}}


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def _model(name, in_channels=3, classes=1):
    torch.manual_seed(0)
    return build_model(name, in_channels=in_channels, classes=classes, options=TINY[name]).eval()


def test_forward_shape_and_channels(name):
    model = _model(name, in_channels=4, classes=3)
    with torch.no_grad():
        out = model(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(70, 50), (33, 97)])
def test_odd_sizes_come_back_at_input_size(name, size):
    with torch.no_grad():
        out = _model(name)(torch.randn(1, 3, *size))
    assert out.shape == (1, 1, *size)


def test_backward_reaches_every_parameter(name):
    model = _model(name).train()
    loss = model(torch.randn(2, 3, 64, 64)).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def test_save_load_roundtrip(name, tmp_path):
    model = _model(name)
    x = torch.randn(1, 3, 64, 64)
    save_checkpoint(tmp_path / "m.pt", {"model": name, "state_dict": model.state_dict()})
    payload = load_checkpoint(tmp_path / "m.pt", expect_model=name)
    again = build_model(name, in_channels=3, classes=1, options=TINY[name]).eval()
    again.load_state_dict(payload["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m.pt", {"model": "fpn", "state_dict": {}})
    with pytest.raises(CheckpointError, match="holds a 'fpn' model, expected 'unet'"):
        load_checkpoint(tmp_path / "m.pt", expect_model="unet")


def test_corrupt_and_missing_checkpoints_are_named(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": "unet", "state_dict": _model("unet").state_dict()})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="best.pt: not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="nothing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_unknown_model_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown model segformer; choose from: unet, fpn, resunet"):
        build_model("segformer", in_channels=3, classes=1)


def test_no_weights_are_downloaded_by_default(monkeypatch):
    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    build_model("resunet", in_channels=3, classes=1)
    build_model("fpn", in_channels=3, classes=1)
