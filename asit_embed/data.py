"""Speech datasets: a manifest CSV, a folder per speaker, or an archive of either.

A manifest has columns ``path,speaker[,role,...]`` with paths relative to the manifest's folder (the layout
of ``speechocean762/manifest.csv``). A folder tree has one sub-folder per speaker holding audio files.
"""

from __future__ import annotations

import csv
import logging
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asit_embed.audio import load_audio

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


@dataclass(frozen=True)
class Item:
    path: str
    speaker: str
    role: str = ""


def read_manifest(path: str | os.PathLike, *, role: str | None = None) -> list[Item]:
    """Items of a manifest CSV (``path,speaker[,role]``), optionally only those of ``role``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "speaker"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"manifest {str(path)!r} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
        items = [Item(str(path.parent / r["path"]), r["speaker"], r.get("role") or "") for r in reader]
    if role is not None:
        items = [it for it in items if it.role == role]
        if not items:
            raise ValueError(f"manifest {str(path)!r} has no rows with role {role!r}")
    return items


def scan_folder(root: str | os.PathLike) -> list[Item]:
    """Items of a folder-per-speaker tree: ``root/<speaker>/**/<clip>.{wav,flac,ogg,mp3}``."""
    root = Path(root)
    items = [Item(str(p), spk.name) for spk in sorted(root.iterdir()) if spk.is_dir()
             for p in sorted(spk.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not items:
        raise ValueError(f"{str(root)!r} holds no <speaker>/<clip> audio files ({sorted(AUDIO_SUFFIXES)})")
    return items


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` into ``dest``, refusing paths that escape it."""
    archive, dest = Path(archive), Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            _check_members(archive, dest, z.namelist())
            z.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            _check_members(archive, dest, t.getnames())
            t.extractall(dest, filter="data")
    else:
        raise ValueError(f"{str(archive)!r} is not a .zip, .tar, .tar.gz or .tgz archive")
    return dest


def _check_members(archive: Path, dest: Path, names: Sequence[str]) -> None:
    for n in names:
        if not (dest / n).resolve().is_relative_to(dest):
            raise ValueError(f"archive {str(archive)!r} member {n!r} would extract outside {str(dest)!r}")


def load_items(source: str | os.PathLike, *, role: str | None = None, workdir: str | os.PathLike | None = None
               ) -> list[Item]:
    """Items from a manifest ``.csv``, a folder tree, or an archive (extracted into ``workdir``)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return read_manifest(source, role=role)
    if source.is_dir():
        return scan_folder(source)
    if not source.exists():
        raise FileNotFoundError(f"dataset {str(source)!r} does not exist")
    root = extract_archive(source, Path(workdir or source.parent) / (source.name.split(".")[0] + "_extracted"))
    manifests = sorted(root.rglob("manifest.csv"))
    if manifests:
        return read_manifest(manifests[0], role=role)
    tops = [p for p in root.iterdir() if p.is_dir()]
    # An archive usually wraps the speaker folders in one top-level folder.
    return scan_folder(tops[0] if len(tops) == 1 and not any(p.is_file() for p in tops[0].iterdir()) else root)


class SpeakerLabels:
    """Speaker name <-> class index, sorted by name; saved with the model as a plain list."""

    def __init__(self, names: Sequence[str]):
        self.names = sorted(set(names))
        self.index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> int:
        return self.index[name]


class CropDataset(torch.utils.data.Dataset):
    """Labelled clips held in memory; each access returns a random fixed-length crop.

    Clips shorter than the crop are repeated to fill it. Crops draw from torch's global RNG, so a seeded
    epoch is reproducible.
    """

    def __init__(self, items: Sequence[Item], labels: SpeakerLabels, *, crop_samples: int, sample_rate: int):
        self.items = list(items)
        self.crop = crop_samples
        self.labels = torch.tensor([labels[it.speaker] for it in self.items])
        self.waves = [torch.from_numpy(load_audio(it.path, sample_rate=sample_rate)) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return random_crop(self.waves[i], self.crop), int(self.labels[i])


def random_crop(wave: torch.Tensor, n: int) -> torch.Tensor:
    """A random ``n``-sample crop of ``(samples,)`` ``wave``, tiling it first when it is shorter."""
    if wave.shape[0] < n:
        wave = wave.repeat(n // wave.shape[0] + 1)
    start = int(torch.randint(0, wave.shape[0] - n + 1, ()))
    return wave[start:start + n]


def pad_collate(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D tensors to ``(batch, max_len)``; returns it with the ``(batch,)`` int64 lengths."""
    lengths = torch.tensor([w.shape[0] for w in waves])
    out = torch.zeros(len(waves), int(lengths.max()), dtype=waves[0].dtype)
    for i, w in enumerate(waves):
        out[i, : w.shape[0]] = w
    return out, lengths


def load_waveforms(items: Sequence[Item], sample_rate: int) -> list[np.ndarray]:
    """Full clips for evaluation, in the items' order."""
    return [load_audio(it.path, sample_rate=sample_rate) for it in items]
