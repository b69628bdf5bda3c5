"""Training augmentation: the simulated rooms of the reverberation, and its switch."""

import sys

import pytest
import torch

from asit_embed.training.augment import AugmentConfig, Augmenter, simulated_rirs
from asit_embed.training.train import TrainConfig

pytest.importorskip("pyroomacoustics")


def test_simulated_rooms_are_reproducible_and_decay():
    a = simulated_rirs(6, 16000, seed=3)
    b = simulated_rirs(6, 16000, seed=3)
    assert len(a) == 6 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], simulated_rirs(1, 16000, seed=4)[0])
    for rir in a:
        peak = int(rir.abs().argmax())
        tail = rir[peak:]
        quarter = len(tail) // 4
        assert quarter > 0.02 * 16000  # a tail of tens of milliseconds at least
        assert tail[:quarter].pow(2).sum() > 10 * tail[-quarter:].pow(2).sum()  # and it dies away


def test_longer_reverberation_times_give_more_late_energy():
    def late_share(low, high):  # the share of each response's energy later than 50 ms after the direct path
        shares = []
        for rir in simulated_rirs(8, 16000, low, high, seed=0):
            tail = rir[int(rir.abs().argmax()):].pow(2)
            shares.append(float(tail[800:].sum() / tail.sum()))
        return sum(shares) / len(shares)
    assert late_share(0.6, 0.8) > 1.5 * late_share(0.2, 0.25)


def test_reverb_smears_an_impulse_and_keeps_the_level():
    aug = Augmenter(AugmentConfig(rooms=4, p_reverb=1.0), 16000)
    x = torch.zeros(3, 16000)
    x[:, 4000] = 1.0
    x[:, 8000:8800] = 0.1 * torch.randn(3, 800)
    y = aug.reverb(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y.abs().mean(1), x.abs().mean(1), rtol=1e-3)  # average amplitude kept
    after = slice(4000 + 160, 4000 + 800)  # 10–50 ms after the impulse: silent before, the room's tail after
    assert x[:, after].abs().max() == 0 and (y[:, after].abs().amax(1) > 1e-3).all()
    assert abs(int(y[0, :6000].abs().argmax()) - 4000) < 160  # aligned on the direct path


def test_reverb_is_off_by_default_and_needs_no_simulator_then(monkeypatch):
    assert AugmentConfig().p_reverb == 0
    monkeypatch.setitem(sys.modules, "pyroomacoustics", None)  # as if not installed
    assert Augmenter(AugmentConfig(), 16000).rirs == []
    with pytest.raises(ImportError, match=r"asit-embed\[train\]"):
        Augmenter(AugmentConfig(p_reverb=0.5), 16000)


def test_reverb_settings_travel_with_the_training_config():
    cfg = TrainConfig(data="x.csv", augment=AugmentConfig(p_reverb=0.4, rt60_high=0.6))
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back.augment.p_reverb == 0.4 and back.augment.rt60_high == 0.6
    old = cfg.to_dict()
    for key in ("p_reverb", "rt60_low", "rt60_high", "rooms", "room_seed"):
        del old["augment"][key]  # a run configured before reverberation existed
    assert TrainConfig.from_dict(old).augment.p_reverb == 0
