import json
import sys

import numpy as np
import pytest

from asit_embed import load_encoder
from asit_embed.cli import main as cli

pytest.importorskip("onnxruntime", reason="the ONNX backend needs onnxruntime (pip install 'asit-embed[onnx]')")


@pytest.fixture(scope="module")
def onnx_encoder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ASIT_EMBED_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield load_encoder(backend="onnx")
    mp.undo()


def test_onnx_backend_matches_torch(encoder, onnx_encoder, clip_rows):
    assert onnx_encoder.backend == "onnx"
    paths = [r["path"] for r in clip_rows[:10]]  # short clips padded and masked, long ones windowed
    ref = encoder.embed_batch(paths, batch_size=4)
    for batch in (1, 4, 16):  # the graph's batch and frame axes are dynamic
        out = onnx_encoder.embed_batch(paths, batch_size=batch)
        assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
        assert (np.sum(out * ref, axis=1) >= 0.9999).all()
    assert onnx_encoder.fingerprint == encoder.fingerprint


def test_onnx_graph_stretches_positions_past_the_training_crop(encoder, onnx_encoder):
    """Windows longer than the 2 s training crop get the positional table stretched to each clip's own
    length; the exported graph must do that for any batch and length, not only the example it was traced on."""
    import torch

    c = encoder.config
    for lengths in ([350, 260, 120], [c.crop_frames + 1], [500, c.crop_frames]):
        spec = torch.randn(len(lengths), c.n_mels, max(lengths), generator=torch.Generator().manual_seed(0))
        for row, n in enumerate(lengths):
            spec[row, :, n:] = 0
        lengths = torch.tensor(lengths)
        with torch.no_grad():
            ref = torch.nn.functional.normalize(encoder.model(spec, lengths), dim=1)
        out = torch.nn.functional.normalize(torch.as_tensor(onnx_encoder._network(spec, lengths)).float(), dim=1)
        assert ((ref * out).sum(1) >= 0.9999).all(), lengths


def test_onnx_backend_falls_back_with_a_clear_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("ASIT_EMBED_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.warns(UserWarning, match=r"needs onnx and onnxruntime.*pip install 'asit-embed\[onnx\]'.*torch"):
        enc = load_encoder(backend="onnx")
    assert enc.backend == "torch"
    assert not list(tmp_path.iterdir())


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        load_encoder(backend="tensorrt")


def test_cli_export_writes_a_graph_that_names_its_encoder(tmp_path, encoder, capsys):
    import onnx

    out = tmp_path / "encoder.onnx"
    assert cli(["export", "--onnx", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["asit_embed.fingerprint"] == encoder.fingerprint
    assert json.loads(meta["asit_embed.config"])["embedding_dim"] == encoder.config.embedding_dim
    assert ("asit_embed.prehead" in meta) == (encoder.model.prehead is not None)


def test_cli_embed_with_the_onnx_backend(tmp_path, clip_rows, encoder, monkeypatch):
    monkeypatch.setenv("ASIT_EMBED_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "e.npy"
    assert cli(["embed", clip_rows[0]["path"], "--backend", "onnx", "--out", str(out)]) == 0
    assert float(np.load(out)[0] @ encoder.embed(clip_rows[0]["path"])) >= 0.9999


def test_exported_graph_and_its_metadata_reproduce_a_clip_embedding(tmp_path, encoder, clip_rows):
    """What another runtime needs is in the file: windows through the graph, averaged, whitened per metadata
    (and, for a checkpoint with a pre-head analysis, joined with that analysis per metadata)."""
    import onnxruntime
    import torch

    from asit_embed.features import features

    out = tmp_path / "encoder.onnx"
    assert cli(["export", "--onnx", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    d = encoder.config.embedding_dim
    whitening = json.loads(meta["asit_embed.whitening"])  # the shipped default is whitened
    mean, matrix = np.asarray(whitening["mean"]), np.asarray(whitening["matrix"])
    assert matrix.shape == (d, d)
    prehead = json.loads(meta["asit_embed.prehead"]) if "asit_embed.prehead" in meta else None
    assert (prehead is None) == (encoder.model.prehead is None)

    row = max(clip_rows, key=lambda r: float(r["seconds"]))  # several windows
    feats = features(torch.from_numpy(encoder.prepare(row["path"])), encoder.config.front_end).numpy()
    windows = encoder.windows(feats.shape[0])
    assert len(windows) > 1
    parts = [slice(0, d)] if prehead is None else [slice(0, d), slice(d, None)]
    totals = [0.0 for _ in parts]
    for a, b in windows:
        e = session.run(None, {"spec": feats[a:b].T[None].astype(np.float32), "lengths": np.array([b - a])})[0][0]
        assert e.shape == (encoder.model.window_dim,)
        for i, part in enumerate(parts):
            totals[i] = totals[i] + e[part] / np.linalg.norm(e[part])

    def mapped(total, mean, matrix):
        x = (total / np.linalg.norm(total) - mean) @ matrix
        return x / np.linalg.norm(x)

    clip = mapped(totals[0], mean, matrix)
    if prehead is not None:
        share = prehead["share"]
        pre = mapped(totals[1], np.asarray(prehead["mean"]), np.asarray(prehead["matrix"]))
        clip = np.concatenate([np.sqrt(1 - share) * clip, np.sqrt(share) * pre])
    assert clip.shape == (encoder.dim,)
    assert float(clip @ encoder.embed(row["path"])) >= 0.9999


def test_a_prehead_checkpoint_exports_and_matches_torch(tmp_path, clip_rows, monkeypatch):
    """A checkpoint with a pre-head analysis (tools/whiten.py --prehead-share) on the ONNX backend."""
    import torch

    from asit_embed.checkpoint import save_checkpoint
    from asit_embed.model import ASiTEncoder, asit_tiny

    torch.manual_seed(0)
    model = ASiTEncoder(asit_tiny(depth=2)).eval()
    model.set_whitening(torch.zeros(192), torch.eye(192))
    model.set_prehead(0.01 * torch.randn(576), torch.randn(576, 30), 0.5)
    path = save_checkpoint(tmp_path / "p.pt", model)
    monkeypatch.setenv("ASIT_EMBED_CACHE", str(tmp_path / "cache"))
    paths = [r["path"] for r in clip_rows[:4]]
    ref = load_encoder(path, precision="float32").embed_batch(paths)
    onnx = load_encoder(path, backend="onnx")
    assert onnx.backend == "onnx" and onnx.dim == 222
    assert (np.sum(onnx.embed_batch(paths) * ref, axis=1) >= 0.9999).all()
