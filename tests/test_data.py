import shutil
import tarfile
import zipfile

import pytest
import torch

from asit_embed.data import (SpeakerLabels, extract_archive, load_items, pad_collate, random_crop,
                             read_manifest, scan_folder)

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


def test_labels_crops_and_collate():
    labels = SpeakerLabels(["b", "a", "b", "c"])
    assert labels.names == ["a", "b", "c"] and labels["c"] == 2 and len(labels) == 3
    wave = torch.arange(10.0)
    torch.manual_seed(0)
    crop = random_crop(wave, 4)
    assert crop.shape == (4,) and torch.equal(crop, torch.arange(crop[0], crop[0] + 4))
    assert random_crop(wave, 25).shape == (25,)  # short clips are tiled
    padded, lengths = pad_collate([torch.ones(3), torch.ones(5)])
    assert padded.shape == (2, 5) and lengths.tolist() == [3, 5] and padded[0, 3:].sum() == 0
