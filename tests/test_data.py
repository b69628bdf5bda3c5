import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from asit_embed.training.data import (CropDataset, SpeakerLabels, corpus_weights, extract_archive, load_items,
                                     load_sources, random_crop, read_manifest, scan_folder)

CLIPS_SPEAKERS = ["0036", "0070", "1027", "1418", "3020", "9611"]


def test_manifest_roles_and_paths(clips_manifest):
    items = read_manifest(clips_manifest)
    assert len(items) == 36 and sorted({it.speaker for it in items}) == CLIPS_SPEAKERS
    assert all(it.role == "dev" for it in items) and all(it.path.endswith(".flac") for it in items)
    with pytest.raises(ValueError, match="no rows with role 'train'"):
        read_manifest(clips_manifest, role="train")


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "m.csv").write_text("file,who\na.wav,x\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "m.csv")


@pytest.fixture
def tree(tmp_path, clips_manifest):
    root = tmp_path / "speakers"
    for spk in CLIPS_SPEAKERS[:3]:
        shutil.copytree(clips_manifest.parent / spk, root / spk)
    return root


def test_folder_tree(tree):
    items = scan_folder(tree)
    assert len(items) == 18 and [it.speaker for it in items[:6]] == ["0036"] * 6
    assert load_items(tree) == items
    with pytest.raises(ValueError, match="no <speaker>/<clip>"):
        scan_folder(tree / "0036")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_extract_into_a_tree(tree, tmp_path, kind):
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(tree.rglob("*.flac")):
                z.write(p, "corpus/" + str(p.relative_to(tree)))
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(tree, arcname="corpus")
    items = load_items(archive, workdir=tmp_path / "work")
    assert len(items) == 18 and {it.speaker for it in items} == set(CLIPS_SPEAKERS[:3])


def test_archive_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_labels_and_crops():
    labels = SpeakerLabels(["b", "a", "b", "c"])
    assert labels.names == ["a", "b", "c"] and labels["c"] == 2 and len(labels) == 3
    wave = torch.arange(10.0)
    torch.manual_seed(0)
    crop = random_crop(wave, 4)
    assert crop.shape == (4,) and torch.equal(crop, torch.arange(crop[0], crop[0] + 4))
    assert random_crop(wave, 25).shape == (25,)  # short clips are tiled


def _corpus(root, name, speakers, clips_per_speaker, clips_manifest, roles=("train",)):
    """A manifest corpus ``root/name`` of the bundled clips, with speaker ids that repeat across corpora."""
    src = read_manifest(clips_manifest)
    folder = root / name
    folder.mkdir(parents=True)
    rows = ["path,speaker,role"]
    for s, spk in enumerate(speakers):
        mine = [it for it in src if it.speaker == spk][:clips_per_speaker]
        for c, it in enumerate(mine):
            shutil.copy(it.path, folder / f"{s}_{c}.flac")
            rows.append(f"{s}_{c}.flac,spk{s},{roles[c % len(roles)]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def test_several_corpora_keep_speakers_apart_and_roles(tmp_path, clips_manifest):
    a = _corpus(tmp_path, "corpus-a", CLIPS_SPEAKERS[:2], 4, clips_manifest, roles=("train", "train", "dev", "train"))
    b = _corpus(tmp_path, "corpus-b", CLIPS_SPEAKERS[2:5], 2, clips_manifest)
    items = load_sources([a, b], role="train")
    # Both corpora call their speakers spk0, spk1, ...: the corpus prefix keeps them five distinct speakers.
    assert sorted({it.speaker for it in items}) == ["corpus-a/spk0", "corpus-a/spk1",
                                                    "corpus-b/spk0", "corpus-b/spk1", "corpus-b/spk2"]
    assert len(items) == 6 + 6 and all(it.role == "train" for it in items)
    assert {it.corpus for it in items} == {"corpus-a", "corpus-b"}
    dev = load_sources([a, b], role="dev")
    assert [it.speaker for it in dev] == ["corpus-a/spk0", "corpus-a/spk1"]
    assert load_sources(a, role="train")[0].speaker == "spk0"  # one corpus: ids as written
    with pytest.raises(ValueError, match="distinct names"):
        load_sources([a, a])


def test_corpus_weights_follow_speakers_not_clips():
    from asit_embed.training.data import Item

    # corpus x: 1 speaker with 8 clips; corpus y: 3 speakers with 1 clip each.
    items = [Item(f"x{i}", "x/s", corpus="x") for i in range(8)] + [Item(f"y{i}", f"y/s{i}", corpus="y")
                                                                     for i in range(3)]
    w = corpus_weights(items)
    assert w[:8].sum() == pytest.approx(0.25) and w[8:].sum() == pytest.approx(0.75)
    assert torch.allclose(w[:8], w[0].expand(8))
    z = [Item("z0", "z/s", corpus="z")]
    w = corpus_weights(items + z, first_share=0.5)  # x fixed at half; y (3 speakers) and z (1) split the rest
    assert [w[:8].sum().item(), w[8:11].sum().item(), w[11].item()] == pytest.approx([0.5, 0.375, 0.125])
    with pytest.raises(ValueError, match="between 0 and 1"):
        corpus_weights(items, first_share=1.0)


def test_short_clips_are_extended_with_the_same_speaker(tmp_path):
    import soundfile as sf

    from asit_embed.training.data import Item

    # Speaker "a" has three 0.6 s clips at distinct constant levels; "b" one clip. Crops are 1.5 s.
    items = []
    for name, level in (("a0", 0.1), ("a1", 0.2), ("a2", 0.3), ("b0", 0.5)):
        sf.write(tmp_path / f"{name}.wav", np.full(9600, level, dtype=np.float32), 16000)
        items.append(Item(str(tmp_path / f"{name}.wav"), name[0]))
    data = CropDataset(items, SpeakerLabels(["a", "b"]), crop_samples=24000, sample_rate=16000)
    torch.manual_seed(0)
    for _ in range(20):
        crop, label = data[0]
        levels = set(np.round(crop.numpy().astype(np.float64), 3).tolist())
        assert crop.shape == (24000,) and label == 0
        assert levels <= {0.1, 0.2, 0.3} and len(levels) >= 2  # only speaker a, and more than one of its clips
    crop, label = data[3]
    assert label == 1 and set(np.round(crop.numpy().astype(np.float64), 3).tolist()) == {0.5}  # a lone clip is repeated


def test_speed_copies_are_new_speakers(tmp_path):
    import soundfile as sf

    from asit_embed.training.data import Item

    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000)
    sf.write(tmp_path / "b.wav", (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 16000)
    items = [Item(str(tmp_path / "a.wav"), "a"), Item(str(tmp_path / "b.wav"), "b")]
    data = CropDataset(items, SpeakerLabels(["a", "b"]), crop_samples=8000, sample_rate=16000,
                       speed_factors=(0.9, 1.1))
    assert len(data) == 6 and data.num_speakers == 6
    assert [data[i][1] for i in range(6)] == [0, 1, 2, 3, 4, 5]  # clip i at speed k: label + k * 2 speakers

    def peak_hz(x):
        return float(np.argmax(np.abs(np.fft.rfft(x.numpy()))) * 16000 / x.shape[0])

    torch.manual_seed(0)
    assert [peak_hz(data[i][0]) for i in (0, 2, 4)] == pytest.approx([1000, 900, 1100], abs=4)
    assert all(data[i][0].shape == (8000,) for i in range(6))


def test_a_folder_tree_holds_out_dev_speakers(tmp_path, clips_manifest):
    root = tmp_path / "mine"
    for spk in CLIPS_SPEAKERS:
        shutil.copytree(clips_manifest.parent / spk, root / spk)
    train, dev = load_items(root, role="train"), load_items(root, role="dev")
    train_speakers, dev_speakers = {it.speaker for it in train}, {it.speaker for it in dev}
    assert len(dev_speakers) >= 2 and train_speakers and not train_speakers & dev_speakers
    assert len(train) + len(dev) == len(load_items(root)) == 36
    assert load_items(root, role="dev") == dev  # stable
    with pytest.raises(ValueError, match="no speakers of role 'test'"):
        load_items(root, role="test")
