"""AS-norm against cosine scoring on both dev sets, for our default and for Resemblyzer.

    python benchmarks/as_norm.py        # a few minutes; writes benchmarks/results/as_norm.json
    python benchmarks/as_norm.py --also "fine-tune=runs/varcrop_long/final.pt"   # + other checkpoints

AS-norm (``SpeakerRegistry(as_norm=True)``, :class:`asit_embed.scoring.ASNorm`) scores a trial by how far its
cosine stands above each side's top-N cohort scores. Three scorings per encoder, same protocols and figures
as ``benchmarks/accuracy.py``:

- cosine, what a registry does by default;
- AS-norm, cohort of single clips: up to 4 clips of every training speaker of the three corpora
  (:func:`asit_embed.scoring.cohort_clips`), top 200. For our default this is the cohort it ships
  (``tools/calibrate.py``); Resemblyzer gets its own embeddings of the same clips;
- AS-norm, cohort of speaker means: the mean of each speaker's same clips, top 50 (the kind of cohort the
  default shipped before: one mean per training speaker).

``--also LABEL=PATH`` adds other checkpoints, each with its own embeddings of the same cohort clips.

The cohort and its top-N were chosen on these dev sets, so the AS-norm rows are slightly optimistic.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_dev_set_options, cached, dev_sets, print_tables, require, score, training_cohort  # noqa: E402
from peers import RESEMBLYZER_NAME, resemblyzer  # noqa: E402

from asit_embed import load_encoder  # noqa: E402
from asit_embed.scoring import DEFAULT_TOP_N, ASNorm  # noqa: E402
from asit_embed.training.metrics import enrollment_templates  # noqa: E402

CLIPS_PER_SPEAKER = 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dev_set_options(p)
    p.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                   help="another checkpoint to score the same ways (its own embeddings of the cohort clips)")
    p.add_argument("--result", type=Path, default=RESULTS / "as_norm.json")
    args = p.parse_args()
    also = [tuple(a.split("=", 1)) for a in args.also]
    if any(len(a) != 2 for a in also):
        p.error("--also takes LABEL=PATH")
    require(args.manifest, *args.words)
    sets = dev_sets(args.manifest, args.words)
    cohort_paths, cohort_speakers = training_cohort(args.manifest, args.words, CLIPS_PER_SPEAKER)
    speaker_names = sorted(set(cohort_speakers))

    encoder = load_encoder()
    shipped = ASNorm.from_metadata(encoder.metadata)
    if shipped is None or len(shipped.cohort) != len(cohort_paths):
        sys.exit("the shipped checkpoint's cohort is not the one tools/calibrate.py builds: recalibrate it")
    teacher = resemblyzer()
    systems = {"asit-embed default": (lambda paths: encoder.embed_batch(paths), shipped.cohort),
               RESEMBLYZER_NAME: ((lambda paths: np.stack([teacher.embed_file(q) for q in paths])), None)}
    for label, path in also:
        systems[label] = (load_encoder(path).embed_batch, None)
    rows = []
    for name, (embed, cohort) in systems.items():
        embed = cached(embed)
        if cohort is None:
            cohort = embed(cohort_paths)
        cohort = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
        scorings = {"cosine": None,
                    f"AS-norm, {len(cohort)} clips, top {shipped.top_n}": ASNorm(cohort, top_n=shipped.top_n).score,
                    f"AS-norm, {len(speaker_names)} speaker means, top {DEFAULT_TOP_N}":
                        ASNorm(enrollment_templates(cohort, cohort_speakers, range(len(cohort)), speaker_names),
                               top_n=DEFAULT_TOP_N).score}
        for scoring, normalize in scorings.items():
            rows.append({"system": f"{name}: {scoring}", "encoder": name, "scoring": scoring,
                         **score(embed, sets, normalize)})
            print(f"scored {rows[-1]['system']}", file=sys.stderr)
    print_tables(rows, sets)
    args.result.write_text(json.dumps({"fingerprint": encoder.fingerprint, "cohort_clips": len(cohort_paths),
                                       "clips_per_speaker": CLIPS_PER_SPEAKER, "top_n": shipped.top_n,
                                       "also": dict(also), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
