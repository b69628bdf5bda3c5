import dataclasses

import pytest
import torch
import torch.nn.functional as F

from asit_embed.config import ArchitectureConfig, EncoderConfig, FrontEndConfig, InferenceConfig
from asit_embed.model import ASiTEncoder, asit_small, asit_tiny


def tiny(**kw):
    return asit_tiny(**{**dict(width=48, depth=2, num_heads=2, pool_attention_dim=16, embedding_dim=24), **kw})


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_presets_have_the_advertised_size():
    assert 5.0e6 < count_parameters(ASiTEncoder(asit_tiny())) < 6.0e6
    assert 20e6 < count_parameters(ASiTEncoder(asit_small())) < 23e6


@pytest.mark.parametrize("patch,stride", [((128, 2), (128, 2)), ((16, 16), (16, 16)), ((16, 16), (10, 10))])
def test_variable_length_input_and_padding_masks(patch, stride):
    torch.manual_seed(0)
    model = ASiTEncoder(tiny(patch_size=patch, patch_stride=stride, crop_frames=100)).eval()
    spec = torch.randn(3, 128, 260)  # longer than the positional table: interpolated
    lengths = torch.tensor([260, 130, 40])
    with torch.no_grad():
        batched = model(spec, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(spec[i:i + 1, :, :n])
            assert torch.allclose(batched[i], alone[0], atol=1e-4), (patch, stride, n)
    assert batched.shape == (3, 24) and torch.isfinite(batched).all()


def test_token_mask_marks_whole_patches_only():
    model = ASiTEncoder(tiny(patch_size=(16, 16), patch_stride=(16, 16)))
    mask = model.token_mask(torch.tensor([15, 16, 47]), 16)
    # 128 mel / 16 = 8 frequency patches per time step; 47 frames -> 2 whole time steps
    assert mask.sum(1).tolist() == [0, 8, 16]


def test_config_is_frozen_and_checked():
    cfg = asit_tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 10
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig.from_dict({"width": 100, "num_heads": 3})
    with pytest.raises(ValueError, match="exceeds n_mels"):
        EncoderConfig.from_dict({"n_mels": 80})  # 128-high patches
    with pytest.raises(ValueError, match="hop_frames"):
        EncoderConfig.from_dict({"hop_frames": 300})
    with pytest.raises(TypeError, match="unknown encoder setting"):
        EncoderConfig.from_dict({"widht": 100})
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg  # round trip through a plain dict (lists for tuples)
    assert EncoderConfig.from_dict({**cfg.to_dict(), "patch_size": [16, 16], "patch_stride": [16, 16]}).patch_size == (16, 16)


def test_too_short_input_is_a_clear_error():
    model = ASiTEncoder(tiny()).eval()
    with pytest.raises(ValueError, match="at least 2"):
        model(torch.randn(1, 128, 1))
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 80, 100))


def test_config_parts_compose_and_read_through():
    cfg = asit_tiny(max_freq_hz=3800.0, hop_frames=200)
    assert isinstance(cfg.front_end, FrontEndConfig) and cfg.front_end.max_freq_hz == 3800.0
    assert isinstance(cfg.model, ArchitectureConfig) and cfg.model.width == cfg.width == 192
    assert isinstance(cfg.inference, InferenceConfig) and cfg.hop_frames == 200
    flat = cfg.to_dict()
    # The checkpoint format is the flat union of the three parts, each field once.
    names = [f.name for part in (FrontEndConfig, ArchitectureConfig, InferenceConfig) for f in dataclasses.fields(part)]
    assert sorted(flat) == sorted(names) and len(names) == len(set(names))
    assert cfg.replace(depth=4).depth == 4 and cfg.replace(depth=4).hop_frames == 200 and cfg.depth == 12
    with pytest.raises(AttributeError):
        cfg.no_such_setting


def test_bfloat16_inference_attention_matches_sdpa():
    from asit_embed.model import _attention_bf16

    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 3, 37, 64) for _ in range(3))
    mask = (torch.arange(37)[None, :] < torch.tensor([37, 30, 12, 1])[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = _attention_bf16(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask).float()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    cos = F.cosine_similarity(out.flatten(2), ref.flatten(2), dim=-1)
    assert cos.min() > 0.999, cos.min()
    # the model takes it only for bfloat16 inference on the CPU; training keeps PyTorch's kernel
    model = ASiTEncoder(asit_tiny(depth=1)).eval()
    spec, lengths = torch.randn(2, 128, 120), torch.tensor([120, 60])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(spec, lengths).float()
    with torch.inference_mode():
        exact = model(spec, lengths)
    assert F.cosine_similarity(fast, exact).min() > 0.999
