"""Enroll five speakers from three clips each, then identify held-out clips, including clips of a sixth
speaker who was never enrolled (the right answer for those is "unknown").

Every clip comes from speakers the bundled model never saw in training. Run with ``make demo``.
Writes ``out/demo_scores.png`` (probe × enrolled-speaker score matrix).
"""

import csv
import sys
import time
from pathlib import Path

import numpy as np

from asit_embed import load_encoder
from enroll import SpeakerRegistry

HERE = Path(__file__).resolve().parent
CLIPS = HERE / "clips"
OUT = HERE.parent / "out"
N_ENROLL = 3
UNENROLLED = "9611"


def main() -> int:
    t0 = time.monotonic()
    rows = list(csv.DictReader(open(CLIPS / "manifest.csv")))
    by_speaker: dict[str, list[Path]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(CLIPS / r["path"])
    encoder = load_encoder()
    registry = SpeakerRegistry(encoder=encoder)  # in memory; pass a directory to keep it
    print(f"encoder {encoder.fingerprint}, {registry.scoring} scoring\n")

    probes: list[tuple[str, Path]] = []
    for speaker, paths in sorted(by_speaker.items()):
        paths = sorted(paths)
        if speaker == UNENROLLED:
            probes += [(speaker, p) for p in paths[N_ENROLL:]]
            continue
        spk = registry.enroll(f"spk-{speaker}", paths[:N_ENROLL])
        print(f"enrolled {spk.name} from {spk.n_clips} clips ({spk.seconds:.1f} s)")
        probes += [(speaker, p) for p in paths[N_ENROLL:]]

    enrolled = registry.names()
    points = registry.operating_points()
    print(f"\nidentify threshold {points['identify_threshold']:.3f}: lets {points['fpir']:.0%} of strangers through "
          f"with {points['speakers']} speakers enrolled (calibration: {points['calibration']['source']})")
    results = registry.identify_embeddings(encoder.embed_batch([p for _, p in probes]), k=len(enrolled))
    print(f"\n{'clip':<22} {'true speaker':<24} {'answer':<10} {'score':>6}")
    correct = named = 0
    scores = np.zeros((len(probes), len(enrolled)))
    for row, ((speaker, path), matches) in enumerate(zip(probes, results)):
        for m in matches:
            scores[row, enrolled.index(m.name)] = m.score
        best = matches[0]
        answer = best.name if best.accepted else "unknown"
        truth = f"spk-{speaker}" if speaker != UNENROLLED else "unknown"
        ok = answer == truth
        correct += ok
        named += speaker != UNENROLLED and best.name == truth
        label = f"spk-{speaker}" + (" (not enrolled)" if speaker == UNENROLLED else "")
        verdict = "ok" if ok else ("right name, below threshold" if best.name == truth else "WRONG")
        print(f"{speaker + '/' + path.stem:<22} {label:<24} {answer:<10} {best.score:6.3f}  {verdict}")
    n_unk = sum(s == UNENROLLED for s, _ in probes)
    rejected = sum(not r[0].accepted for (s, _), r in zip(probes, results) if s == UNENROLLED)
    print(f"\naccuracy {correct}/{len(probes)} = {correct / len(probes):.1%}   "
          f"enrolled speakers named first {named}/{len(probes) - n_unk}   "
          f"un-enrolled speaker rejected {rejected}/{n_unk}   ({time.monotonic() - t0:.1f} s)")
    print("(accuracy: the right name above the threshold, or \"unknown\" for the un-enrolled speaker; a strict "
          "threshold trades some enrolled callers for strangers kept out)")
    save_plot(scores, enrolled, probes, registry.threshold, registry.scoring)
    return 0


def save_plot(scores: np.ndarray, enrolled: list[str], probes, threshold: float, scoring: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 8))
    im = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(enrolled)), enrolled, rotation=45, ha="right")
    ax.set_yticks(range(len(probes)), [f"{s}/{p.stem}" for s, p in probes], fontsize=7)
    for (i, j), v in np.ndenumerate(scores):
        if v >= threshold:
            ax.text(j, i, "✓", ha="center", va="center", color="white", fontsize=8)
    ax.set_title(f"{scoring} score, probe × enrolled speaker (✓: ≥ threshold {threshold:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(OUT / "demo_scores.png", dpi=110)
    print(f"score matrix saved to {OUT / 'demo_scores.png'}")


if __name__ == "__main__":
    sys.exit(main())
