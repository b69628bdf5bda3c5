"""Add a whitening of a trained checkpoint's clip embeddings, fitted on its training speakers.

    python tools/whiten.py runs/ft/final.pt runs/ft/whitened.pt [--window-frames 300 --hop-frames 300]
                           [--shrinkage 0.1 0.05 0.2] [--prehead-share 0.5 0.3 --prehead-shrinkage 0.2 0.1]

Every ``train`` clip of the three corpora is embedded with the checkpoint (with the windows given,
which are stored in the output's config), and :func:`asit_embed.training.backend.fit_whitening` fits the
map (a linear discriminant analysis with the first ``--shrinkage``); the output is the checkpoint with that
:class:`asit_embed.model.Whitening` in its weights, so its fingerprint changes. ``tools/calibrate.py`` then
turns it into a shipped default. No ``dev`` audio is used for the fit.

With ``--prehead-share A`` (the first of those given) the output also gets a :class:`asit_embed.model.PreHead`: the same analysis of
the ``3 * width`` features the embedding head reads (the first ``--prehead-shrinkage``), its first
``--prehead-dims`` directions (default: one fewer than the training speakers), joined to the whitened
embedding so that it carries ``A`` of the cosine.

Each ``--shrinkage`` given is fitted and scored, beside the checkpoint without whitening, on both dev sets
(their protocols, ``asit_embed.training.metrics.PROTOCOLS``), with cosine and with AS-norm (4 clips of every
training speaker, top 200, as ``tools/calibrate.py`` ships it), and so is each ``--prehead-share`` with each
``--prehead-shrinkage``, beside the first whitening: ``benchmarks/results/whitening.json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, add_data_options, load_with_windows, train_and_dev

from asit_embed.checkpoint import fingerprint as checkpoint_fingerprint, save_checkpoint
from asit_embed.encoder import SpeakerEncoder
from asit_embed.scoring import ASNorm, cohort_clips
from asit_embed.training.backend import DEFAULT_SHRINKAGE, fit_whitening
from asit_embed.training.metrics import PROTOCOLS, evaluate_embeddings

COHORT_CLIPS, COHORT_TOP_N = 4, 200  # tools/calibrate.py's defaults
# metadata measured on the embeddings, which the whitening changes: tools/calibrate.py makes it anew
CALIBRATION_KEYS = ("scoring", "threshold", "threshold_asnorm", "cohort", "cohort_top_n", "calibrations", "calibration")


def dev_figures(dev: dict, cohort: np.ndarray) -> dict:
    """``{scoring: {dev set: summary}}`` for cosine and AS-norm, from each dev set's ``(items, embeddings)``
    and the cohort's embeddings."""
    as_norm = ASNorm(cohort, top_n=COHORT_TOP_N).score
    out = {"cosine": {}, "as-norm": {}}
    for name, (items, emb) in dev.items():
        speakers, keys = [it.speaker for it in items], [it.path for it in items]
        for scoring, normalize in (("cosine", None), ("as-norm", as_norm)):
            res = evaluate_embeddings(emb, speakers, keys, open_set=True, normalize=normalize, **PROTOCOLS[name])
            out[scoring][name] = res.summary()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(p)
    p.add_argument("--shrinkage", type=float, nargs="+", default=[DEFAULT_SHRINKAGE],
                   help="of the within-speaker covariance; the first is written to OUT, every one is scored")
    p.add_argument("--prehead-share", type=float, nargs="+",
                   help="add a pre-head analysis carrying this share of the cosine, in (0, 1) (default: none); "
                        "the first is written to OUT, every one is scored")
    p.add_argument("--prehead-shrinkage", type=float, nargs="+", default=[DEFAULT_SHRINKAGE],
                   help="of the pre-head analysis; the first is written to OUT, every one is scored")
    p.add_argument("--prehead-dims", type=int, help="directions the pre-head analysis keeps (default: speakers - 1)")
    p.add_argument("--result", type=Path, default=RESULTS / "whitening.json")
    args = p.parse_args()
    t0 = time.monotonic()
    ckpt = load_with_windows(p, args, "the fit")
    if any(k.startswith(("whitening.", "prehead.")) for k in ckpt.state_dict):
        p.error(f"{args.checkpoint} is whitened already")
    for share in args.prehead_share or []:
        if not 0 < share < 1:
            p.error(f"--prehead-share {share} must lie in (0, 1)")
    train, dev = train_and_dev(args)
    # The whitening maps a clip's finished embedding (SpeakerEncoder applies it after averaging the windows),
    # so every row scores the same plain embeddings, each mapped through its whitening: one embedding pass.
    # With a pre-head analysis to fit, the pass runs through an identity one at share 1/2: the two halves of
    # each vector are then the averaged embedding and head input, each unit norm, scaled by sqrt(1/2).
    plain = SpeakerEncoder(ckpt)  # bfloat16 where native: the precision users embed in (cosine >= 0.999)
    d, width = ckpt.config.embedding_dim, 3 * ckpt.config.width
    if args.prehead_share:
        plain.model.set_prehead(torch.zeros(width), torch.eye(width), 0.5)

    def embed(items) -> np.ndarray:
        return plain.embed_batch([it.path for it in items], progress=True) * (2 ** 0.5 if args.prehead_share else 1)

    emb = embed(train)
    speakers = [it.speaker for it in train]
    picked = cohort_clips([it.path for it in train], speakers, COHORT_CLIPS)
    dev = {name: (items, embed(items)) for name, items in dev.items()}
    rows = [{"system": "no whitening", **dev_figures({n: (it, e[:, :d]) for n, (it, e) in dev.items()}, emb[picked, :d])}]

    data = (f"{len(train)} train-role clips of the {len(set(speakers))} training speakers of the three corpora, "
            f"embedded with windows of {ckpt.config.window_frames} frames")
    kept = {k: v for k, v in ckpt.metadata.items() if k not in CALIBRATION_KEYS}
    fits = [("whitened", s, None, None) for s in args.shrinkage]
    fits += [("side by side", args.shrinkage[0], s, a) for a in args.prehead_share or [] for s in args.prehead_shrinkage]
    written = fits[len(args.shrinkage) if args.prehead_share else 0]  # what OUT holds
    for system, shrinkage, pre_shrinkage, share in fits:
        mean, matrix = fit_whitening(emb[:, :d], speakers, shrinkage=shrinkage)
        model = ckpt.build()
        model.set_whitening(torch.from_numpy(mean), torch.from_numpy(matrix))
        row = {"system": f"{system}, shrinkage {shrinkage:g}", "shrinkage": shrinkage}
        columns = slice(0, d)
        if pre_shrinkage is not None:
            centre, scalings = fit_whitening(emb[:, d:], speakers, shrinkage=pre_shrinkage)
            k = args.prehead_dims or len(set(speakers)) - 1
            model.set_prehead(torch.from_numpy(centre), torch.from_numpy(scalings[:, :k]), share)
            row = {"system": f"{system}, shrinkage {shrinkage:g} / {pre_shrinkage:g}, share {share:g}",
                   "shrinkage": shrinkage, "prehead": {"shrinkage": pre_shrinkage, "dims": k, "share": share}}
            columns = slice(None)

        def whiten(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.whiten(torch.from_numpy(np.ascontiguousarray(x[:, columns]))).numpy()

        rows.append({**row, **dev_figures({n: (items, whiten(e)) for n, (items, e) in dev.items()}, whiten(emb[picked]))})
        if (system, shrinkage, pre_shrinkage, share) == written:
            whitening = {"fit": "asit_embed.training.backend.fit_whitening", "shrinkage": shrinkage, "data": data}
            if pre_shrinkage is not None:
                whitening["prehead"] = row["prehead"]
            save_checkpoint(args.out, model, metadata={**kept, "whitening": whitening})
            fingerprint = checkpoint_fingerprint(model.config, model.state_dict())
    for row in rows:
        print(f"{row['system']:<28}", "  ".join(
            f"{scoring} {name}: top-1 {m['top1']:.1%} EER {m['eer']:.2%} minDCF {m['min_dcf']:.3f} "
            f"os-EER {m['open_set_eer']:.1%} TPIR {m['tpir_at_fpir']:.1%}"
            for scoring in ("as-norm",) for name, m in row[scoring].items()))
    report = {"checkpoint": str(args.checkpoint), "out": str(args.out), "fingerprint": fingerprint,
              "window_frames": ckpt.config.window_frames, "hop_frames": ckpt.config.hop_frames,
              "train_clips": len(train), "train_speakers": len(set(speakers)),
              "cohort": f"{COHORT_CLIPS} clips per training speaker, top {COHORT_TOP_N}", "rows": rows,
              "seconds": round(time.monotonic() - t0, 1)}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
