"""Weight-space interpolation of a fine-tuned encoder with the encoder it was fine-tuned from (WiSE-FT:
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022).

    python tools/interpolate.py START.pt FINETUNED.pt OUT.pt --alpha 0.5

Writes ``(1 - alpha) * START + alpha * FINETUNED`` for every floating-point weight (integer buffers, such as
batch-norm counters, are taken from FINETUNED). Both checkpoints must share the encoder config: the fine-tune
started from START (``train --init START``), so the two lie in one basin and their average is a model in its
own right that can keep more of START's skill where fine-tuning on other data wore it down. The metadata
records both sources and alpha; choose alpha on dev (``benchmarks/ablation.py``).
"""

import argparse
import sys
from pathlib import Path


from asit_embed.checkpoint import load_checkpoint, save_checkpoint


def interpolate(start: Path, finetuned: Path, alpha: float) -> tuple:
    a, b = load_checkpoint(start), load_checkpoint(finetuned)
    if a.config.to_dict() != b.config.to_dict():
        raise ValueError(f"{start} and {finetuned} have different encoder configs: not one fine-tuning lineage")
    mixed = {k: ((1 - alpha) * a.state_dict[k].float() + alpha * v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in b.state_dict.items()}
    model = b.build()
    model.load_state_dict(mixed)
    meta = {**b.metadata, "interpolation": {"start": str(start), "finetuned": str(finetuned), "alpha": alpha,
                                            "method": "WiSE-FT weight-space interpolation"}}
    return model, meta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("start", type=Path)
    p.add_argument("finetuned", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned model, in [0, 1]")
    args = p.parse_args()
    if not 0 <= args.alpha <= 1:
        p.error("--alpha must be in [0, 1]")
    model, meta = interpolate(args.start, args.finetuned, args.alpha)
    save_checkpoint(args.out, model, metadata=meta)
    print(f"wrote {args.out}: {1 - args.alpha:g} x {args.start} + {args.alpha:g} x {args.finetuned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
