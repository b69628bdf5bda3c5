import pytest
import torch

from asit_embed import CheckpointError, SpeakerEncoder, load_encoder
from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.model import ASiTEncoder, asit_tiny


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ASiTEncoder(asit_tiny(depth=2)).eval()


def test_round_trip_gives_identical_outputs(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, metadata={"note": "x"})
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config and ckpt.metadata == {"note": "x"}
    spec = torch.randn(2, 128, 150)
    with torch.no_grad():
        assert torch.equal(model(spec), ckpt.build()(spec))
    assert load_encoder(path).fingerprint == SpeakerEncoder.from_model(model).fingerprint


def test_half_precision_storage_is_close_and_smaller(model, tmp_path):
    full = save_checkpoint(tmp_path / "f.pt", model)
    half = save_checkpoint(tmp_path / "h.pt", model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    spec = torch.randn(2, 128, 150)
    with torch.no_grad():
        a, b = model(spec), load_checkpoint(half).build()(spec)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999


def test_truncated_corrupt_and_foreign_files_are_rejected(model, tmp_path):
    good = save_checkpoint(tmp_path / "m.pt", model).read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name in ["trunc.pt", "junk.pt", "foreign.pt", "list.pt"]:
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_never_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "asit-embed/encoder", "x": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_the_config_are_rejected(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["depth"] = 3
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "bad.pt").build()
