"""``asit-embed`` command line: embed, train, pretrain, evaluate, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

PRESETS = ("tiny", "small")


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().split("x")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MELSxFRAMES such as 128x2, got {text!r}") from None


def _role(text: str) -> str | None:
    return None if text.lower() in ("", "none", "all") else text


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from asit_embed import load_encoder

    encoder = load_encoder(args.checkpoint, backend=args.backend, precision=args.precision)
    emb = encoder.embed_files(args.clips, batch_size=args.batch_size, progress=args.progress)
    if args.out:
        np.save(args.out, emb)
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.out}")
    else:
        for path, e in zip(args.clips, emb):
            print(path, " ".join(f"{v:.5f}" for v in e))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from asit_embed import model
    from asit_embed.augment import AugmentConfig
    from asit_embed.train import TrainConfig, train

    overrides = {k: v for k, v in dict(patch_size=args.patch, patch_stride=args.stride or args.patch,
                                       crop_frames=args.crop_frames, depth=args.depth,
                                       drop_path=args.drop_path, max_freq_hz=args.max_freq_hz).items()
                 if v is not None}
    enc = getattr(model, f"asit_{args.preset}")(**overrides).to_dict() if not args.init else overrides
    aug = AugmentConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AugmentConfig)
                           if getattr(args, f.name, None) is not None})
    cfg = TrainConfig(data=args.data, out_dir=args.out, train_role=args.train_role, dev_data=args.dev_data,
                      dev_role=args.dev_role, encoder=enc, augment=aug, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                      layer_decay=args.layer_decay, margin=args.margin, scale=args.scale,
                      margin_start=args.margin_start, margin_ramp=args.margin_ramp,
                      eval_every=args.eval_every, seed=args.seed, max_minutes=args.max_minutes, init=args.init,
                      progress=args.progress)
    record = train(cfg, resume=args.resume)
    print(json.dumps(record))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from asit_embed import model
    from asit_embed.pretrain import PretrainConfig, plot_log, pretrain

    overrides = {k: v for k, v in dict(patch_size=args.patch, patch_stride=args.stride or args.patch,
                                       crop_frames=args.crop_frames, depth=args.depth).items() if v is not None}
    cfg = PretrainConfig(data=args.data, out_dir=args.out, role=args.role,
                         encoder=getattr(model, f"asit_{args.preset}")(**overrides).to_dict(), epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                         w_global=args.w_global, w_local=args.w_local, w_recon=args.w_recon,
                         ema_start=args.ema_start, teacher_temp=args.teacher_temp,
                         teacher_temp_end=args.teacher_temp_end, w_koleo=args.w_koleo,
                         view_shift=args.view_shift, seed=args.seed,
                         max_minutes=args.max_minutes, progress=args.progress)
    record = pretrain(cfg, resume=args.resume)
    plot_log(Path(args.out) / "log.jsonl", Path(args.out) / "losses.png")
    print(json.dumps(record))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from asit_embed import load_encoder
    from asit_embed.data import load_items
    from asit_embed.metrics import evaluate_embeddings, plot_evaluation

    encoder = load_encoder(args.checkpoint, precision=args.precision)
    items = load_items(args.data, role=args.role)
    emb = encoder.embed_files([it.path for it in items], progress=args.progress)
    res = evaluate_embeddings(emb, [it.speaker for it in items], [it.path for it in items], n_enroll=args.n_enroll)
    summary = {"checkpoint": str(args.checkpoint or "default"), "data": str(args.data), "role": args.role,
               "precision": encoder.precision, **res.summary()}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot_evaluation(res, args.plot)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asit_embed import load_encoder
    from asit_embed.export import export_onnx

    encoder = load_encoder(args.checkpoint)
    path = export_onnx(encoder.model, args.onnx, fingerprint=encoder.fingerprint)
    print(f"wrote {path} (encoder {encoder.fingerprint}; inputs spec (batch, {encoder.config.n_mels}, frames) "
          f"and lengths (batch,), output embedding (batch, {encoder.dim}))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asit-embed", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed audio files")
    e.add_argument("clips", nargs="+")
    e.add_argument("--out", help="write an (n, dim) float32 .npy instead of printing")
    e.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--progress", action="store_true")
    e.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="what runs the network (onnx: ONNX Runtime, needs asit-embed[onnx])")
    e.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: about 2x faster on CPUs with native bf16, cosine >= 0.9999 to float32")
    e.set_defaults(func=cmd_embed)

    x = sub.add_parser("export", help="export the encoder network to ONNX")
    x.add_argument("--onnx", required=True, help="output .onnx file")
    x.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("train", help="train an encoder with AAM-softmax (resumable; works under torchrun)")
    t.add_argument("--data", required=True, help="manifest .csv, folder per speaker, or .zip/.tar.gz of either")
    t.add_argument("--out", default="runs/train", help="run folder (config, log.jsonl, last.pt, best.pt)")
    t.add_argument("--train-role", type=_role, default="train", help="manifest role to train on ('all': every row)")
    t.add_argument("--dev-data", help="dev set (default: --data)")
    t.add_argument("--dev-role", type=_role, default="dev", help="manifest role to evaluate on ('none': skip)")
    t.add_argument("--preset", choices=PRESETS, default="tiny")
    t.add_argument("--patch", type=_pair, help="patch size MELSxFRAMES (default 128x2)")
    t.add_argument("--stride", type=_pair, help="patch stride MELSxFRAMES (default: the patch size)")
    t.add_argument("--crop-frames", type=int)
    t.add_argument("--depth", type=int)
    t.add_argument("--drop-path", type=float)
    t.add_argument("--max-freq-hz", type=float,
                   help="zero mel bins above this frequency (3800: 8 kHz and wideband audio embed alike)")
    t.add_argument("--init", help="start from this encoder checkpoint (e.g. from pretraining)")
    t.add_argument("--layer-decay", type=float, default=1.0)
    t.add_argument("--epochs", type=int, default=80)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-epochs", type=int, default=3)
    t.add_argument("--margin", type=float, default=0.2)
    t.add_argument("--scale", type=float, default=30.0)
    t.add_argument("--margin-start", type=int, default=2, help="epochs with margin 0 before the ramp")
    t.add_argument("--margin-ramp", type=int, default=10, help="epochs to raise the margin to its final value")
    t.add_argument("--eval-every", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float,
                   help="stop before an epoch that would overrun this budget (counting earlier runs of a resumed one)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--progress", action="store_true")
    from asit_embed.augment import AugmentConfig

    for f in dataclasses.fields(AugmentConfig):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), dest=f.name,
                       help=f"augmentation setting (default {f.default}; a p-* of 0 switches it off)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("pretrain", help="ASiT self-supervised pretraining (GMML + local-global distillation)")
    r.add_argument("--data", required=True, help="manifest .csv, folder, or archive (labels are ignored)")
    r.add_argument("--role", type=_role, default="train", help="manifest role to use ('all': every row)")
    r.add_argument("--out", default="runs/pretrain", help="run folder (log.jsonl, losses.png, last.pt, encoder.pt)")
    r.add_argument("--preset", choices=PRESETS, default="tiny")
    r.add_argument("--patch", type=_pair)
    r.add_argument("--stride", type=_pair)
    r.add_argument("--crop-frames", type=int)
    r.add_argument("--depth", type=int)
    r.add_argument("--epochs", type=int, default=100)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=5e-4)
    r.add_argument("--warmup-epochs", type=int, default=10)
    r.add_argument("--w-global", type=float, default=1.0, help="global (CLS) distillation weight; 0 switches it off")
    r.add_argument("--w-local", type=float, default=1.0, help="local (token) distillation weight; 0 switches it off")
    r.add_argument("--w-recon", type=float, default=2.0, help="GMML reconstruction weight; 0 switches it off")
    r.add_argument("--ema-start", type=float, default=0.996,
                   help="teacher EMA momentum at the start (cosine schedule to 1)")
    r.add_argument("--teacher-temp", type=float, default=0.04, help="teacher temperature at the start")
    r.add_argument("--teacher-temp-end", type=float, default=0.07,
                   help="teacher temperature after its linear warm-up (30 epochs)")
    r.add_argument("--w-koleo", type=float, default=0.0,
                   help="KoLeo weight: spreads the student's global bottleneck so the targets cannot go uniform")
    r.add_argument("--view-shift", type=float,
                   help="max seconds between the starts of a clip's two crops (default: independent crops)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-minutes", type=float, help="wall-clock budget, counting earlier runs of a resumed one")
    r.add_argument("--resume", action="store_true")
    r.add_argument("--progress", action="store_true")
    r.set_defaults(func=cmd_pretrain)

    v = sub.add_parser("evaluate", help="unseen-speaker protocol: top-1, EER, minDCF")
    v.add_argument("--data", required=True)
    v.add_argument("--role", type=_role, default="dev")
    v.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    v.add_argument("--n-enroll", type=int, default=5)
    v.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    v.add_argument("--out", help="write the JSON summary here")
    v.add_argument("--plot", help="write score histograms + DET curve to this PNG")
    v.add_argument("--progress", action="store_true")
    v.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    from asit_embed.audio import AudioError
    from asit_embed.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (AudioError, CheckpointError, FileNotFoundError, ImportError, ValueError, TypeError) as err:
        print(f"asit-embed {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
