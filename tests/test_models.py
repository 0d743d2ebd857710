"""Model registry, encoder interface and encoder checkpoints, on tiny networks."""

from __future__ import annotations

import json

import pytest
import torch

from selma3d.errors import InputError, Selma3dError
from selma3d.artifacts.encoder import (load_encoder_checkpoint, load_encoder_into, model_from_encoder_checkpoint,
                                       save_encoder)
from selma3d.models import MODEL_NAMES, build_model

TINY = {
    "unet3d": {"features": (4, 8, 16)},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "vit3d": {"img_size": 16, "patch_size": (4, 8, 8), "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "mlp_dim": 64, "decoder_channels": 8},
    "attunet2d": {"features": (4, 8, 16)},
}
# Non-cubic inputs, each the smallest convenient multiple of the model's size divisor
# (vit3d's differs from its construction size 16^3, so position embeddings are resampled).
SHAPES = {
    "unet3d": (2, 1, 8, 12, 20),
    "swinunetr": (1, 1, 32, 32, 64),
    "vit3d": (2, 1, 8, 24, 40),
    "attunet2d": (2, 1, 3, 12, 20),
}


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return build_model(name, **{**TINY[name], **kw})


def test_model_names():
    assert set(MODEL_NAMES) == {"unet3d", "swinunetr", "vit3d", "attunet2d"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_encode_shapes_on_non_cubic_input(name):
    model = tiny(name, out_channels=2).eval()
    x = torch.randn(SHAPES[name])
    divisor = model.size_divisor
    divisor = (divisor,) * 3 if isinstance(divisor, int) else tuple(divisor)
    assert all(s % d == 0 for s, d in zip(x.shape[2:], divisor))
    with torch.no_grad():
        y = model(x)
        z = model.encode(x)
    assert y.shape == (x.shape[0], 2, *x.shape[2:])
    assert torch.isfinite(y).all()
    expected = tuple(s // d for s, d in zip(x.shape[2:], divisor))
    assert z.shape == (x.shape[0], model.encoder_channels, *expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_encoder_is_the_part_encode_depends_on(name):
    model = tiny(name)
    all_params = {id(p) for p in model.parameters()}
    enc_params = {id(p) for p in model.encoder.parameters()}
    assert enc_params and enc_params < all_params  # a strict, non-empty subset
    shape = SHAPES[name]
    model.encode(torch.randn(shape)).square().mean().backward()
    touched = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and touched <= enc_params
    # ... and the full forward trains the rest too.
    model.zero_grad(set_to_none=True)
    model(torch.randn(shape)).square().mean().backward()
    touched = {id(p) for p in model.parameters() if p.grad is not None}
    assert touched - enc_params


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_rebuilds_the_same_architecture(name):
    model = tiny(name)
    config = json.loads(json.dumps(model.config))  # configs survive JSON
    assert config["name"] == name
    rebuilt = build_model(**config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_encoder_checkpoint_round_trip_is_bit_identical(name, tmp_path):
    model = tiny(name)
    path = save_encoder(model, tmp_path / "sub" / "encoder.pt", method="unit-test", step=7)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    ckpt = load_encoder_checkpoint(path)
    assert ckpt["format"] == "selma3d-encoder" and ckpt["model"] == model.config
    assert ckpt["method"] == "unit-test" and ckpt["step"] == 7
    torch.manual_seed(123)  # a different random decoder init
    loaded = model_from_encoder_checkpoint(path, out_channels=3)
    assert loaded.config["out_channels"] == 3
    want, got = model.encoder.state_dict(), loaded.encoder.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    x = torch.randn(SHAPES[name])
    with torch.no_grad():
        assert torch.equal(model.eval().encode(x), loaded.eval().encode(x))
        assert loaded(x).shape[1] == 3


def test_mismatched_models_are_refused(tmp_path):
    path = save_encoder(tiny("unet3d"), tmp_path / "enc.pt")
    with pytest.raises(Selma3dError, match="features"):
        load_encoder_into(build_model("unet3d", features=(4, 8, 32)), path)
    with pytest.raises(Selma3dError, match="unet3d"):
        load_encoder_into(tiny("attunet2d"), path)
    with pytest.raises(Selma3dError, match="features"):
        model_from_encoder_checkpoint(path, features=(4, 8))
    # Tampered weights: the strict load names the offending keys.
    ckpt = load_encoder_checkpoint(path)
    key = next(iter(ckpt["encoder_state"]))
    ckpt["encoder_state"]["extra.weight"] = ckpt["encoder_state"].pop(key)
    with pytest.raises(Selma3dError, match="missing: .*unexpected: extra.weight"):
        load_encoder_into(tiny("unet3d"), ckpt)


def test_decoder_options_may_differ_from_the_checkpoint(tmp_path):
    path = save_encoder(tiny("vit3d"), tmp_path / "enc.pt")
    model = model_from_encoder_checkpoint(path, decoder_channels=4)
    assert model.config["decoder_channels"] == 4


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(Selma3dError, match="does not exist"):
        load_encoder_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(Selma3dError, match="cannot read"):
        load_encoder_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(Selma3dError, match="not a selma3d encoder checkpoint"):
        load_encoder_checkpoint(other)
    good = save_encoder(tiny("unet3d"), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(Selma3dError, match="cannot read"):
        load_encoder_checkpoint(truncated)


def test_unknown_names_and_bad_options():
    with pytest.raises(Selma3dError, match="known models: unet3d, swinunetr, vit3d, attunet2d"):
        build_model("resnet")
    with pytest.raises(Selma3dError, match="no option.*featurez"):
        build_model("unet3d", featurez=(4, 8))
    with pytest.raises(Selma3dError, match="features"):
        build_model("unet3d", features=(4,))
    with pytest.raises(Selma3dError, match="multiple of 12"):
        build_model("swinunetr", feature_size=10)
    with pytest.raises(Selma3dError, match="num_heads"):
        build_model("vit3d", hidden_size=30, num_heads=4)
    with pytest.raises(Selma3dError, match="powers of two"):
        build_model("vit3d", patch_size=6, img_size=12)
    with pytest.raises(Selma3dError, match="norm"):
        build_model("attunet2d", norm="layer")


def test_inputs_of_wrong_size_are_refused():
    with pytest.raises(InputError, match="multiples of the patch size"):
        tiny("vit3d")(torch.randn(1, 1, 8, 20, 16))
    with pytest.raises(InputError, match="multiple of 32"):
        tiny("swinunetr")(torch.randn(1, 1, 32, 48, 32))
    with pytest.raises(InputError, match="at least 64"):  # instance norm of a single bottleneck voxel
        tiny("swinunetr").train()(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(InputError, match="multiples of 4"):
        tiny("attunet2d")(torch.randn(1, 1, 2, 10, 8))


def test_attunet2d_works_on_slices_and_volumes_alike():
    model = tiny("attunet2d").eval()
    volume = torch.randn(2, 1, 3, 8, 12)
    with torch.no_grad():
        y = model(volume)
        z = model.encode(volume)
        for k in range(volume.shape[2]):  # slice k of the volume == the network on that slice
            torch.testing.assert_close(y[:, :, k], model(volume[:, :, k]))
            torch.testing.assert_close(z[:, :, k], model.encode(volume[:, :, k]))
    assert model.encode(volume[:, :, 0]).shape == (2, 16, 2, 3)


def test_vit3d_position_embedding_is_resampled_for_other_sizes():
    model = tiny("vit3d")
    enc = model.encoder
    assert enc.position_embedding(enc.base_grid) is enc.patch_embed.position_embeddings
    grid = enc.grid_shape((8, 24, 40))
    assert grid == (2, 3, 5)
    pos = enc.position_embedding(grid)
    assert pos.shape == (1, 30, 32)
    # A table that varies linearly along x stays ordered along x after resampling.
    with torch.no_grad():
        table = enc.patch_embed.position_embeddings.view(*enc.base_grid, 32)
        table.copy_(torch.arange(enc.base_grid[2], dtype=torch.float32).view(1, 1, -1, 1).expand_as(table))
    pos = enc.position_embedding(grid).view(*grid, 32)[..., 0]
    assert torch.all(pos[..., 1:] > pos[..., :-1])
    # The learned table gets gradients from inputs of a non-construction size.
    enc.patch_embed.position_embeddings.grad = None
    model(torch.randn(1, 1, 8, 24, 40)).mean().backward()
    assert enc.patch_embed.position_embeddings.grad.abs().sum() > 0


def test_vit3d_token_mask_acts_only_through_the_mask_token():
    enc = tiny("vit3d").encoder.eval()
    x = torch.randn(2, 1, 8, 16, 24)
    d, h, w = enc.grid_shape(x.shape[2:])
    mask = torch.zeros(2, d * h * w, dtype=torch.bool)
    mask[0, [0, 3, 5]] = True
    mask[1, [1, 2]] = True
    with torch.no_grad():
        plain = enc.forward_tokens(x)
        unmasked = enc.forward_tokens(x, torch.zeros_like(mask))
        masked = enc.forward_tokens(x, mask)
        # Change the image only inside the masked patches: nothing changes.
        x2 = x.clone()
        patches = x2.view(2, 1, d, 4, h, 8, w, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(2, d * h * w, -1)
        patches[mask] = torch.randn_like(patches[mask])
        x2 = patches.view(2, d, h, w, 1, 4, 8, 8).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(x.shape)
        assert not torch.equal(x, x2)
        masked2 = enc.forward_tokens(x2, mask)
        # Change the mask token: masked outputs change.
        enc.mask_token.add_(1.0)
        masked3 = enc.forward_tokens(x, mask)
    assert plain[0].shape == (2, 32) and plain[1].shape == (2, d * h * w, 32)
    torch.testing.assert_close(plain[1], unmasked[1])
    torch.testing.assert_close(masked[1], masked2[1])
    torch.testing.assert_close(masked[0], masked2[0])
    assert not torch.allclose(masked[1], plain[1])
    assert not torch.allclose(masked3[1], masked[1])
    with pytest.raises(InputError, match="token_mask"):
        enc.forward_tokens(x, mask[:, :-1])
