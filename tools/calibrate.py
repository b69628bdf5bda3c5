"""Turn a trained checkpoint into the shipped default: calibrate the operating points on the dev speakers,
attach the AS-norm cohort, store compactly (fp16).

    python tools/calibrate.py runs/ft/best.pt asit_embed/pretrained/default.pt [--window-frames 300 --hop-frames 300]

- ``--window-frames`` / ``--hop-frames``: the windows a long clip is embedded in and the hop between them
  (frames of 10 ms; hop == window: an even split into the fewest windows), stored in the shipped config;
  everything below is measured with them.

- ``calibrations``: for cosine and for AS-norm scoring, the impostor score table of
  :class:`asit_embed.calibration.Calibration` from the ``dev`` speakers (unseen in training) of the dev sets
  named by ``--calibrate-on`` (default: speechocean762; ``speechocean762 words`` pools both, each weighted
  equally), under their evaluation protocols. The registry derives from it the verification threshold (a
  false-accept rate per trial) and the identification threshold for its current size (a false-positive
  identification rate). Both dev sets are scored either way, and the metadata records which calibrated.
- ``threshold`` / ``threshold_asnorm``: the EER points on speechocean762 dev (used only by registries that
  are given no calibration; kept for the record).
- ``cohort``: for AS-norm, ``--cohort-clips`` clip embeddings of each *training* speaker of the three corpora
  (evenly spaced through its clips sorted by path), scored with the top ``--cohort-top-n`` (``cohort_top_n``).
  Single clips rather than one mean per speaker: on the dev sets they score better on speechocean762 and in
  TPIR on the words (``benchmarks/as_norm.py``; README, "AS-norm scoring").
Writes ``benchmarks/results/calibration.json`` with every number it stored.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from _common import RESULTS, add_data_options, load_with_windows, train_and_dev

from asit_embed import load_encoder
from asit_embed.checkpoint import save_checkpoint
from asit_embed.encoder import SpeakerEncoder
from asit_embed.scoring import ASNorm, cohort_clips
from asit_embed.training.metrics import PROTOCOLS, eer, enrollment_split, evaluate_embeddings
from asit_embed.training.open_set import dev_voices, pooled_calibration, protocol_trials

FPIR_SIZES = (1, 5, 25, 100, 1000, 10000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(p)
    p.add_argument("--calibrate-on", nargs="+", choices=("speechocean762", "words"), default=["speechocean762"],
                   help="dev sets whose impostor trials make the shipped calibration")
    p.add_argument("--scoring", choices=("cosine", "as-norm"), default="cosine",
                   help="the scoring a registry uses with this checkpoint unless told otherwise")
    p.add_argument("--cohort-clips", type=int, default=4, help="AS-norm cohort: clips per training speaker")
    p.add_argument("--cohort-top-n", type=int, default=200, help="AS-norm: the top cohort scores each side's "
                                                                  "statistics come from")
    args = p.parse_args()
    t0 = time.monotonic()
    ckpt = load_with_windows(p, args, "calibration")
    encoder = SpeakerEncoder(ckpt, precision="float32")  # the reference precision
    train, dev = train_and_dev(args)
    picked = cohort_clips([it.path for it in train], [it.speaker for it in train], args.cohort_clips)
    cohort = encoder.embed_batch([train[i].path for i in picked], progress=True)
    n_speakers = len({train[i].speaker for i in picked})

    sets, results = {}, {}
    for name, items in dev.items():
        emb = encoder.embed_batch([it.path for it in items], progress=True)
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        speakers, keys = [it.speaker for it in items], [it.path for it in items]
        enroll, probe = enrollment_split(keys, speakers, **PROTOCOLS[name])
        sets[name] = (x, speakers, enroll, probe)
        results[name] = evaluate_embeddings(emb, speakers, keys, **PROTOCOLS[name])
    as_norm = ASNorm(cohort, top_n=args.cohort_top_n).score
    source = "dev speakers unseen in training: " + ", ".join(
        f"{len({sets[n][1][i] for i in sets[n][2]})} of {n}" for n in args.calibrate_on) + (
        ", corpora weighted equally" if len(args.calibrate_on) > 1 else "")
    calibrations = {}
    for scoring, normalize in (("cosine", None), ("as-norm", as_norm)):
        trials = [(name, *protocol_trials(*sets[name], normalize=normalize)[1:]) for name in args.calibrate_on]
        # what a registry adapts a cosine table by (an AS-norm one is used as fitted: asit_embed.calibration)
        voices = None if normalize else dev_voices([sets[name] for name in args.calibrate_on])
        calibrations[scoring] = pooled_calibration(trials, source=source, scoring=scoring, voices=voices)
    so762 = results["speechocean762"]
    threshold_asnorm = eer(*protocol_trials(*sets["speechocean762"], normalize=as_norm)[:2])[1]

    metadata = {**ckpt.metadata, "scoring": args.scoring, "threshold": so762.eer_threshold,
                "threshold_asnorm": threshold_asnorm,
                "cohort": torch.from_numpy(cohort.astype(np.float32)).half(), "cohort_top_n": args.cohort_top_n,
                "calibrations": {k: c.to_dict() for k, c in calibrations.items()},
                "calibration": {"data": "role=dev of speechocean762 (5 enrollment clips each) and of the word corpora "
                                        "(3 enrollment clips, up to 20 probes)", "sets": list(args.calibrate_on),
                                "dev": {n: r.summary() for n, r in results.items()},
                                "cohort": f"{len(cohort)} clips of the {n_speakers} training speakers of the three "
                                          f"corpora (up to {args.cohort_clips} each), top {args.cohort_top_n}"}}
    save_checkpoint(args.out, ckpt.build(), metadata=metadata, half=True)
    # the fp16 copy is what users get: re-check it gives the same dev numbers
    shipped = load_encoder(args.out, precision="float32")
    items = dev["speechocean762"]
    res16 = evaluate_embeddings(shipped.embed_batch([it.path for it in items]), [it.speaker for it in items],
                                [it.path for it in items])
    report = {"checkpoint": str(args.checkpoint), "out": str(args.out), "scoring": args.scoring, "size_mb": round(args.out.stat().st_size / 2**20, 2),
              "fingerprint": shipped.fingerprint, "threshold": so762.eer_threshold, "threshold_asnorm": threshold_asnorm,
              "identify_threshold_at_fpir_1pct": {scoring: {n: round(c.identify_threshold(n, 0.01), 4) for n in FPIR_SIZES}
                                                  for scoring, c in calibrations.items()},
              "verify_threshold_at_far_1pct": {scoring: round(c.verify_threshold(0.01), 4) for scoring, c in calibrations.items()},
              "calibration_sources": {scoring: {**c.describe(), "cross_mean": c.cross_mean, "reference": c.reference}
                                      for scoring, c in calibrations.items()},
              "dev_fp32": {n: r.summary() for n, r in results.items()}, "dev_fp16_speechocean762": res16.summary(),
              "cohort_clips": len(cohort), "cohort_speakers": n_speakers, "cohort_top_n": args.cohort_top_n, "seconds": round(time.monotonic() - t0, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
