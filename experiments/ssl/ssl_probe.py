"""What does pretraining alone teach about speakers? Frozen-encoder probe of each ablation arm, no fine-tuning.

    python experiments/ssl/ssl_probe.py [--arms-dir runs/ssl_ablation] [--seed 0]

For every ``ARM/pretrain/encoder.pt`` that ``experiments/ssl/ssl_ablation.py`` left (and for a randomly
initialised encoder of the same architecture), each dev clip is embedded whole by the frozen encoder in
two ways, and scored on the usual unseen-speaker protocol (25 dev speakers, 5 enrollment clips each):

- ``cls``: the CLS token (what the global distillation trains);
- ``tokens``: mean ⊕ standard deviation of the patch tokens over time (what the local and
  reconstruction terms train).

No labels touch the encoder here, so this isolates what pretraining learned. Writes
`experiments/ssl/results/ssl_probe.json` and prints the table.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from common import parser, write_result

from asit_embed.audio import load_audio
from asit_embed.checkpoint import load_checkpoint
from asit_embed.features import features
from asit_embed.model import ASiTEncoder
from asit_embed.training.data import load_items
from asit_embed.training.metrics import evaluate_embeddings
from asit_embed.training.runs import seed_all


@torch.no_grad()
def probe(encoder: ASiTEncoder, items) -> dict:
    encoder.eval()
    cls, tok = [], []
    for it in items:
        wave = torch.from_numpy(load_audio(it.path, sample_rate=encoder.config.sample_rate))
        tokens = encoder.forward_features(features(wave, encoder.config.front_end).T[None])[0][0]
        cls.append(tokens[0].numpy())
        patches = tokens[1:]
        tok.append(torch.cat([patches.mean(0), patches.std(0)]).numpy())
    speakers, keys = [it.speaker for it in items], [str(it.path) for it in items]
    out = {}
    for name, emb in (("cls", cls), ("tokens", tok)):
        res = evaluate_embeddings(np.stack(emb), speakers, keys)
        out[name] = {"dev_eer": round(res.eer, 4), "dev_top1": round(res.top1, 4)}
    return out


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--arms-dir", type=Path, default=Path("runs/ssl_ablation"))
    args = p.parse_args()
    items = load_items(args.manifest, role="dev")
    encoders = sorted(args.arms_dir.glob("*/pretrain/encoder.pt"))
    if not encoders:
        print(f"no {args.arms_dir}/*/pretrain/encoder.pt: run experiments/ssl/ssl_ablation.py first", file=sys.stderr)
        return 2
    rows = []
    first = load_checkpoint(encoders[0])
    seed_all(args.seed)  # a random initialisation of the same architecture and feature statistics
    rows.append({"arm": "random_init", **probe(ASiTEncoder(first.config), items)})
    for path in encoders:
        ck = load_checkpoint(path)
        rows.append({"arm": path.parent.parent.name, "pretrain_epochs": ck.metadata["pretrain"]["epochs_done"],
                     **probe(ck.build(), items)})
    print(f"{'encoder':<32} {'CLS EER':>8} {'CLS top-1':>10} {'tokens EER':>11} {'tokens top-1':>13}")
    for r in rows:
        print(f"{r['arm']:<32} {r['cls']['dev_eer']:8.2%} {r['cls']['dev_top1']:10.1%} "
              f"{r['tokens']['dev_eer']:11.2%} {r['tokens']['dev_top1']:13.1%}")
    write_result("ssl_probe.json", {"encoders": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
