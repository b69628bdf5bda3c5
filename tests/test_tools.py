"""tools/interpolate.py (the weight-space average of two checkpoints of one lineage, WiSE-FT) and tools/whiten.py."""

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


def _word_corpus(root, clip_rows, corpus):
    """A corpus like the shared ones from the bundled clips: each cut into 1 s pieces, three speakers in
    ``train``, three in ``dev``."""
    import csv

    import soundfile as sf

    speakers = sorted({r["speaker"] for r in clip_rows})
    folder = root / corpus
    folder.mkdir()
    rows = []
    for r in clip_rows:
        wave, rate = sf.read(ROOT / "examples" / "clips" / r["path"], dtype="float32")
        role = "train" if speakers.index(r["speaker"]) < 3 else "dev"
        for i in range(len(wave) // rate):
            name = f"{Path(r['path']).stem}_{i}.wav"
            sf.write(folder / name, wave[i * rate:(i + 1) * rate], rate)
            rows.append({"path": name, "speaker": r["speaker"], "role": role, "seconds": "1.00"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "speaker", "role", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def test_whiten_adds_a_whitening_and_a_prehead_analysis(tmp_path, clip_rows):
    """tools/whiten.py on a tiny checkpoint and corpora cut from the bundled clips: OUT holds the first
    whitening and, with --prehead-share, the first pre-head analysis; every fit is scored."""
    import json
    import subprocess
    import sys

    import numpy as np

    from asit_embed import load_encoder

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "plain.pt", ASiTEncoder(asit_tiny(**TINY)).eval())
    a, b = _word_corpus(tmp_path, clip_rows, "a"), _word_corpus(tmp_path, clip_rows, "b")
    out, result = tmp_path / "w.pt", tmp_path / "w.json"
    cmd = [sys.executable, str(ROOT / "tools" / "whiten.py"), str(ckpt), str(out), "--manifest", str(a),
           "--words", str(b), "--shrinkage", "0.1", "0.2", "--prehead-share", "0.4", "0.6",
           "--prehead-shrinkage", "0.2", "--prehead-dims", "3", "--result", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(result.read_text())
    assert [r["system"] for r in report["rows"]] == [
        "no whitening", "whitened, shrinkage 0.1", "whitened, shrinkage 0.2",
        "side by side, shrinkage 0.1 / 0.2, share 0.4", "side by side, shrinkage 0.1 / 0.2, share 0.6"]
    assert report["train_speakers"] == 6  # three per corpus, ids kept apart
    for row in report["rows"]:
        assert 0 <= row["as-norm"]["words"]["eer"] <= 1
    encoder = load_encoder(out, precision="float32")
    assert encoder.dim == 32 + 3 and float(encoder.model.prehead.share) == pytest.approx(0.4)
    assert encoder.metadata["whitening"]["prehead"] == {"shrinkage": 0.2, "dims": 3, "share": 0.4}
    assert encoder.fingerprint == report["fingerprint"]
    e = encoder.embed_batch([ROOT / "examples" / "clips" / r["path"] for r in clip_rows[:3]])
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(e[:, 32:], axis=1), np.sqrt(0.4), atol=1e-5)

    again = subprocess.run([*cmd[:2], str(out), str(tmp_path / "x.pt"), *cmd[4:]], capture_output=True, text=True)
    assert again.returncode == 2 and "whitened already" in again.stderr
