"""tools/interpolate.py: the weight-space average of two checkpoints of one lineage (WiSE-FT)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.model import ASiTEncoder, asit_tiny

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(width=64, depth=2, num_heads=2, pool_attention_dim=16, embedding_dim=32, crop_frames=100,
            window_frames=100, hop_frames=50)


def interpolate_module():
    spec = importlib.util.spec_from_file_location("interpolate", ROOT / "tools" / "interpolate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interpolation_mixes_every_weight(tmp_path):
    torch.manual_seed(0)
    a = save_checkpoint(tmp_path / "a.pt", ASiTEncoder(asit_tiny(**TINY)))
    b = save_checkpoint(tmp_path / "b.pt", ASiTEncoder(asit_tiny(**TINY)), metadata={"speakers": ["x"]})
    tool = interpolate_module()
    wa, wb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    for alpha in (0.0, 0.5, 1.0):
        model, meta = tool.interpolate(a, b, alpha)
        mixed = model.state_dict()
        assert meta["interpolation"]["alpha"] == alpha and meta["speakers"] == ["x"]
        for k, v in mixed.items():
            if v.is_floating_point():
                assert torch.allclose(v, (1 - alpha) * wa[k] + alpha * wb[k], atol=1e-6), k
    other = save_checkpoint(tmp_path / "c.pt", ASiTEncoder(asit_tiny(**{**TINY, "embedding_dim": 16})))
    with pytest.raises(ValueError, match="different encoder configs"):
        tool.interpolate(a, other, 0.5)
