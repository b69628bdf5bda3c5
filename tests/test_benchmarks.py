"""benchmarks/accuracy.py: ECAPA-TDNN's dev embeddings, stored by the run that trained it and scored later."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dev_sets(root: Path) -> dict:
    clip = lambda name: SimpleNamespace(path=str(root / name), speaker=name.split("/")[1])  # noqa: E731
    return {"speechocean762": ([clip("so/a/1.flac"), clip("so/a/2.flac"), clip("so/b/1.flac")], "speechocean762"),
            "words": ([clip("sc/c/yes.ogg"), clip("ar/d/no.ogg")], "words")}


def test_stored_ecapa_embeddings_score_the_same_clips_on_another_checkout(tmp_path):
    acc = accuracy_module()
    here, there = tmp_path / "here" / "data", tmp_path / "there" / "data"
    sets = dev_sets(here)
    rng = np.random.default_rng(0)
    embeddings = {name: rng.standard_normal((len(items), 4)).astype(np.float32) for name, (items, _) in sets.items()}
    row = {"system": "ECAPA", "train_data": [str(here / "so" / "manifest.csv")], "trained": "2026-12-02"}
    config = {"epochs": 20, "data": [str(here / "so" / "manifest.csv")], "dev_data": str(here / "so" / "manifest.csv"),
              "out_dir": "runs/ecapa", "progress": False}
    stored = tmp_path / "ecapa.npz"
    acc.write_ecapa_embeddings(stored, row, [{"epoch": 1, "dev_eer": 0.1}], acc.training_key(config, here), sets,
                               embeddings, here)

    moved = dev_sets(there)  # the same corpora under another folder, the run written elsewhere
    key = acc.training_key({**config, "data": [str(there / "so" / "manifest.csv")],
                            "dev_data": str(there / "so" / "manifest.csv"), "out_dir": "elsewhere"}, there)
    assert key == {"epochs": 20, "data": ["so/manifest.csv"], "dev_data": "so/manifest.csv"}
    got_row, embed, history = acc.read_ecapa_embeddings(stored, moved, there, key)
    assert got_row["system"] == "ECAPA" and got_row["train_data"] == ["so/manifest.csv"]
    assert "stored" in got_row["embeddings"] and history == [{"epoch": 1, "dev_eer": 0.1}]
    words = [it.path for it in moved["words"][0]]
    assert np.array_equal(embed(words[::-1]), embeddings["words"][::-1])  # looked up by clip, in any order
    so = [it.path for it in moved["speechocean762"][0]]
    assert np.array_equal(embed(so), embeddings["speechocean762"])

    other = {**moved, "words": (moved["words"][0] + [SimpleNamespace(path=str(there / "ar/e/go.ogg"), speaker="e")],
                                "words")}
    with pytest.raises(SystemExit, match=r"no ECAPA-TDNN embedding of 1 dev clips .*--train-ecapa"):
        acc.read_ecapa_embeddings(stored, other, there, key)
    # a network trained with other settings (here: 8 epochs) is not the one asked for
    assert acc.read_ecapa_embeddings(stored, moved, there, {**key, "epochs": 8}) is None
