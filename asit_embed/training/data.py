"""Speech datasets: a manifest CSV, a folder per speaker, or an archive of either; one or several corpora.

A manifest has columns ``path,speaker[,role,...]`` with paths relative to the manifest's folder (the layout
of ``speechocean762/manifest.csv``). A folder tree has one sub-folder per speaker holding audio files.
Several datasets train together through :func:`load_sources`, which prefixes each speaker id with its corpus
so ids stay unique; :class:`CropDataset` builds crops longer than a corpus's clips by concatenating clips of
the same speaker, can turn speed-perturbed copies into new speakers, and :func:`corpus_weights` keeps a small
corpus from being drowned out by a large one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from asit_embed.audio import AUDIO_SUFFIXES, load_audio, speaker_folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    path: str
    speaker: str
    role: str = ""
    corpus: str = ""


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


DEV_SHARE = 5          # a folder tree holds out about one speaker in DEV_SHARE as its dev role
MIN_DEV_SPEAKERS = 2   # ... and at least this many, once it has 3 * MIN_DEV_SPEAKERS speakers


def folder_roles(speakers: Sequence[str]) -> dict[str, str]:
    """Roles for the speakers of a folder tree, which has none: ``"dev"`` for those whose name hashes to 0
    mod :data:`DEV_SHARE` (so a speaker keeps its role as others are added), topped up to
    :data:`MIN_DEV_SPEAKERS` by smallest hash; ``"train"`` for the rest. Below ``3 * MIN_DEV_SPEAKERS``
    speakers, all train.

    >>> roles = folder_roles([f"spk{i}" for i in range(20)])
    >>> sum(r == "dev" for r in roles.values()) >= 2, sorted(set(roles.values()))
    (True, ['dev', 'train'])
    """
    names = sorted(set(speakers))
    if len(names) < 3 * MIN_DEV_SPEAKERS:
        return dict.fromkeys(names, "train")
    digest = {n: int(hashlib.sha256(n.encode()).hexdigest(), 16) for n in names}
    dev = {n for n in names if digest[n] % DEV_SHARE == 0}
    dev |= set(sorted((n for n in names if n not in dev), key=digest.get)[:max(0, MIN_DEV_SPEAKERS - len(dev))])
    return {n: "dev" if n in dev else "train" for n in names}


def scan_folder(root: str | os.PathLike) -> list[Item]:
    """Items of a folder-per-speaker tree: ``root/<speaker>/**/<clip>.{wav,flac,ogg,mp3}``, with roles from
    :func:`folder_roles` (about a fifth of the speakers ``dev``), so training on a folder holds speakers out
    for model selection without being told."""
    found = [(path, speaker) for speaker, paths in speaker_folders(root).items() for path in paths]
    if not found:
        raise ValueError(f"{str(root)!r} holds no <speaker>/<clip> audio files ({sorted(AUDIO_SUFFIXES)})")
    roles = folder_roles([s for _, s in found])
    return [Item(path, spk, roles[spk]) for path, spk in found]


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
        return _with_role(scan_folder(source), role, source)
    if not source.exists():
        raise FileNotFoundError(f"dataset {str(source)!r} does not exist")
    root = extract_archive(source, Path(workdir or source.parent) / (source.name.split(".")[0] + "_extracted"))
    manifests = sorted(root.rglob("manifest.csv"))
    if manifests:
        return read_manifest(manifests[0], role=role)
    tops = [p for p in root.iterdir() if p.is_dir()]
    # An archive usually wraps the speaker folders in one top-level folder.
    return _with_role(scan_folder(tops[0] if len(tops) == 1 and not any(p.is_file() for p in tops[0].iterdir())
                                  else root), role, source)


def _with_role(items: list[Item], role: str | None, source: Path) -> list[Item]:
    if role is None:
        return items
    kept = [it for it in items if it.role == role]
    if not kept:
        raise ValueError(f"dataset {str(source)!r} has no speakers of role {role!r} (a folder tree holds out about "
                         f"one speaker in {DEV_SHARE} as 'dev' once it has {3 * MIN_DEV_SPEAKERS} speakers; "
                         "use --train-role all / --dev-role none, or pass --dev-data)")
    return kept


def corpus_name(source: str | os.PathLike) -> str:
    """A dataset's name: the folder of a manifest, the folder itself, or an archive's stem."""
    source = Path(source)
    return source.parent.name if source.suffix.lower() == ".csv" else source.name.split(".")[0]


def load_sources(sources: str | os.PathLike | Sequence[str | os.PathLike], *, role: str | None = None,
                 workdir: str | os.PathLike | None = None) -> list[Item]:
    """Items of one dataset, or of several with speaker ids made unique as ``<corpus>/<speaker>``.

    Every item carries its corpus name (see :func:`corpus_name`), also for a single source.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    names = [corpus_name(s) for s in sources]
    if len(set(names)) < len(names):
        raise ValueError(f"datasets must have distinct names to keep speakers apart, got {names}")
    if len(sources) == 1:
        return [dataclasses.replace(it, corpus=names[0]) for it in load_items(sources[0], role=role, workdir=workdir)]
    items = [Item(it.path, f"{name}/{it.speaker}", it.role, name)
             for source, name in zip(sources, names) for it in load_items(source, workdir=workdir)
             if role is None or it.role == role]
    if not items:
        raise ValueError(f"none of the datasets {names} has rows with role {role!r}")
    return items


def corpus_weights(items: Sequence[Item], first_share: float | None = None) -> torch.Tensor:
    """``(len(items),)`` sampling weights giving each corpus a share proportional to its number of speakers.

    ``first_share`` (0–1) fixes the share of the first corpus (that of ``items[0]``) instead; the others split
    the rest in proportion to their speakers.

    Within a corpus every clip is equally likely. A corpus of many short clips from few speakers (40 words ×
    5 repetitions × 30 speakers) would otherwise dominate one with 20 sentences from each of 100 speakers;
    weighting by speakers gives every training speaker about the same exposure, whichever corpus it is in.
    """
    clips: dict[str, int] = {}
    speakers: dict[str, set] = {}
    for it in items:
        clips[it.corpus] = clips.get(it.corpus, 0) + 1
        speakers.setdefault(it.corpus, set()).add(it.speaker)
    total = sum(len(s) for s in speakers.values())
    share = {c: len(s) / total for c, s in speakers.items()}
    if first_share is not None and len(share) > 1:
        if not 0 < first_share < 1:
            raise ValueError(f"first_share {first_share} must lie strictly between 0 and 1")
        first = items[0].corpus
        rest = total - len(speakers[first])
        share = {c: first_share if c == first else (1 - first_share) * len(speakers[c]) / rest for c in share}
    return torch.tensor([share[it.corpus] / clips[it.corpus] for it in items], dtype=torch.float64)


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

    A clip shorter than the crop is followed by other clips of the same speaker, in random order, until the
    crop fits (a speaker with a single clip has it repeated). With ``speed_factors`` (e.g. ``(0.9, 1.1)``)
    the dataset also holds each clip played at those speeds as clips of *new* speakers (the WeSpeaker
    recipe: a voice sped up 10 % is a different voice): index ``i + k * len(items)`` is clip ``i`` at
    ``speed_factors[k - 1]``, labelled ``label + k * num_speakers``. Crops draw from torch's global RNG, so a
    seeded epoch is reproducible.
    """

    def __init__(self, items: Sequence[Item], labels: SpeakerLabels, *, crop_samples: int, sample_rate: int,
                 speed_factors: Sequence[float] = ()):
        self.items = list(items)
        self.crop = crop_samples
        self.sample_rate = sample_rate
        self.speed_factors = tuple(speed_factors)
        self.num_speakers = len(labels) * (1 + len(self.speed_factors))
        base = torch.tensor([labels[it.speaker] for it in self.items])
        self.labels = torch.cat([base + k * len(labels) for k in range(1 + len(self.speed_factors))])
        self.waves = [torch.from_numpy(load_audio(it.path, sample_rate=sample_rate)) for it in self.items]
        self.by_speaker: dict[int, list[int]] = {}
        for i, label in enumerate(base.tolist()):
            self.by_speaker.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        clip, k = i % len(self.items), i // len(self.items)
        speed = self.speed_factors[k - 1] if k else 1.0
        # A crop played at ``speed`` needs ``speed`` times as many source samples (+ a few for the filter).
        need = self.crop if k == 0 else math.ceil(self.crop * speed) + 64
        wave = random_crop(self.speaker_run(clip, need), need)
        if k:
            rate = round(self.sample_rate * speed)
            wave = AF.resample(wave, orig_freq=rate, new_freq=self.sample_rate)[: self.crop]
        return wave, int(self.labels[i])

    def speaker_run(self, clip: int, n: int) -> torch.Tensor:
        """Clip ``clip``, then other clips of its speaker in random order, until at least ``n`` samples."""
        wave = self.waves[clip]
        if wave.shape[0] >= n:
            return wave
        same = self.by_speaker[int(self.labels[clip])]
        parts, total = [wave], wave.shape[0]
        while total < n:
            j = same[int(torch.randint(len(same), ()))] if len(same) > 1 else clip
            if j == clip and len(same) > 1:
                continue
            parts.append(self.waves[j])
            total += self.waves[j].shape[0]
        return torch.cat(parts)


def random_crop(wave: torch.Tensor, n: int) -> torch.Tensor:
    """A random ``n``-sample crop of ``(samples,)`` ``wave``, tiling it first when it is shorter."""
    if wave.shape[0] < n:
        wave = wave.repeat(n // wave.shape[0] + 1)
    start = int(torch.randint(0, wave.shape[0] - n + 1, ()))
    return wave[start:start + n]


def load_waveforms(items: Sequence[Item], sample_rate: int) -> list[np.ndarray]:
    """Full clips for evaluation, in the items' order."""
    return [load_audio(it.path, sample_rate=sample_rate) for it in items]
