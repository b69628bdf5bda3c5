"""Turn a trained checkpoint into the shipped default: calibrate thresholds on dev, attach the AS-norm
cohort, store compactly (fp16).

    python tools/calibrate.py runs/ft_d15_full/best.pt asit_embed/pretrained/default.pt

- ``threshold``: the EER point of raw cosine scores on the ``dev`` speakers (unseen in training) under the
  evaluation protocol (5 enrollment clips per speaker, the rest probes).
- ``cohort``: one unit embedding per *training* speaker (the mean of its clips), for AS-norm.
- ``threshold_asnorm`` and the dev metrics with AS-norm, so a registry can switch it on.
Writes ``benchmarks/results/calibration.json`` with every number it stored.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asit_embed import load_encoder
from asit_embed.checkpoint import load_checkpoint, save_checkpoint
from asit_embed.training.data import read_manifest
from asit_embed.training.metrics import eer, enrollment_split, evaluate_embeddings, min_dcf
from enroll.scoring import ASNorm

ROOT = Path(__file__).resolve().parents[1]
SHARED_MANIFEST = ROOT.parent / "shared" / "data" / "speechocean762" / "manifest.csv"
RESULTS = ROOT / "benchmarks" / "results"  # beside the other measurements of the shipped model


def speaker_means(emb: np.ndarray, speakers: list[str]) -> np.ndarray:
    names = sorted(set(speakers))
    means = np.stack([emb[[i for i, s in enumerate(speakers) if s == n]].mean(0) for n in names])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def asnorm_eval(emb, speakers, keys, cohort, n_enroll=5) -> dict:
    enroll, probe = enrollment_split(keys, speakers, n_enroll=n_enroll)
    names = sorted(set(speakers))
    templates = speaker_means(emb[enroll], [speakers[i] for i in enroll])
    norm = ASNorm(cohort)
    raw = emb[probe] @ templates.T
    mu_t, sd_t = norm.stats(templates)
    scores = norm.normalize(raw, emb[probe], np.broadcast_to(mu_t, raw.shape), np.broadcast_to(sd_t, raw.shape))
    truth = np.array([names.index(speakers[i]) for i in probe])
    rows = np.arange(len(probe))
    tgt, non = scores[rows, truth], np.delete(scores, truth + rows * len(names))
    e, th = eer(tgt, non)
    return {"top1": round(float((scores.argmax(1) == truth).mean()), 4), "eer": round(e, 4),
            "min_dcf": round(min_dcf(tgt, non)[0], 4), "threshold": th}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--manifest", type=Path, default=SHARED_MANIFEST)
    args = p.parse_args()
    if not args.manifest.is_file():
        p.error(f"manifest {args.manifest} not found: calibration needs the speechocean762 corpus (pass --manifest)")
    manifest = args.manifest
    t0 = time.monotonic()
    encoder = load_encoder(args.checkpoint, precision="float32")  # the reference precision
    dev = read_manifest(manifest, role="dev")
    train = read_manifest(manifest, role="train")
    dev_emb = encoder.embed_batch([it.path for it in dev], progress=True)
    train_emb = encoder.embed_batch([it.path for it in train], progress=True)
    dev_spk, dev_keys = [it.speaker for it in dev], [it.path for it in dev]
    res = evaluate_embeddings(dev_emb, dev_spk, dev_keys)
    cohort = speaker_means(train_emb, [it.speaker for it in train])
    asn = asnorm_eval(dev_emb, dev_spk, dev_keys, cohort)

    ckpt = load_checkpoint(args.checkpoint)
    metadata = {**ckpt.metadata,
                "threshold": res.eer_threshold, "threshold_asnorm": asn["threshold"],
                "cohort": torch.from_numpy(cohort).half(),
                "calibration": {"data": "speechocean762 role=dev (25 unseen speakers), 5 enrollment clips each",
                                "dev": res.summary(), "dev_asnorm": asn,
                                "cohort": f"{len(cohort)} training speakers, mean of their clip embeddings"}}
    model = ckpt.build()
    save_checkpoint(args.out, model, metadata=metadata, half=True)
    # the fp16 copy is what users get: re-check it gives the same dev numbers
    shipped = load_encoder(args.out, precision="float32")
    res16 = evaluate_embeddings(shipped.embed_batch(dev_keys), dev_spk, dev_keys)
    report = {"checkpoint": str(args.checkpoint), "out": str(args.out), "size_mb": round(args.out.stat().st_size / 2**20, 2),
              "fingerprint": shipped.fingerprint, "threshold": res.eer_threshold, "threshold_asnorm": asn["threshold"],
              "dev_fp32": res.summary(), "dev_fp16": res16.summary(), "dev_asnorm": asn,
              "seconds": round(time.monotonic() - t0, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
