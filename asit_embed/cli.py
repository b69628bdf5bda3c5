"""``asit-embed`` command line: embed, train, pretrain, evaluate, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

PRESETS = ("tiny", "small")
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


_FORMAT = HelpFormatter
COMMANDS = ("embed", "export", "train", "pretrain", "evaluate", "doctor")

PRETRAIN_HELP = {
    "role": "manifest role to use",
    "w_global": "global (CLS) distillation weight; 0 switches it off",
    "w_local": "local (token) distillation weight; 0 switches it off",
    "w_recon": "GMML reconstruction weight; 0 switches it off",
    "ema_start": "teacher EMA momentum at the start (cosine schedule to 1)",
    "teacher_temp": "teacher temperature at the start",
    "teacher_temp_end": "teacher temperature after its linear warm-up (teacher_temp_epochs)",
    "w_koleo": "KoLeo weight: spreads the student's global bottleneck so the targets cannot go uniform",
    "view_shift": "max seconds between the starts of a clip's two crops (default: independent crops)",
    "max_minutes": "wall-clock budget, counting earlier runs of a resumed one",
    "progress": "progress bar per epoch",
    "epoch_clips": "clips per epoch, drawn by corpus share when several datasets are balanced (default: each "
                   "clip once)",
    "balance_corpora": "with several datasets, give each corpus a share of the clips proportional to its speakers",
    "first_corpus_share": "with several balanced datasets, the first one's share of the clips (the others split "
                          "the rest by speakers)",
    "init": "continue from this encoder checkpoint (its architecture and feature statistics; the heads start "
            "afresh)",
}

TRAIN_HELP = {
    "train_role": "manifest role to train on",
    "dev_role": "manifest role to evaluate on ('none': skip)",
    "balance_corpora": "with several datasets, give each corpus a share of the crops proportional to its speakers",
    "first_corpus_share": "with several balanced datasets, the first one's share of the crops (the others split "
                          "the rest by speakers)",
    "epoch_clips": "crops per epoch (default: one per training clip)",
    "speed_speakers": "speed factors whose copies count as new speakers (e.g. 0.9 1.1; none by default)",
    "epochs": "length of the learning-rate schedule",
    "layer_decay": "< 1 lowers the lr of earlier blocks (fine-tuning from --init)",
    "margin_start": "epochs with margin 0 before the ramp",
    "margin_ramp": "epochs to raise the margin to its final value",
    "eval_every": "evaluate on dev every this many epochs",
    "n_enroll": "enrollment clips per dev speaker",
    "max_minutes": "stop before an epoch that would overrun this budget (counting earlier runs of a resumed one)",
    "init": "start from this encoder checkpoint (e.g. from pretraining)",
    "head_warmup_epochs": "first epochs train only the new heads, the network frozen (fine-tuning from --init)",
    "head_init": "'centroids': start each class weight at its speaker's mean embedding under --init; 'random'",
    "w_teacher": "weight of the distillation from the Resemblyzer teacher (needs asit-embed[train]); 0: off",
    "teacher_cache": ".npz of the teacher's embeddings of the training clips (default: OUT/teacher.npz)",
    "w_relation": "with --w-teacher: weight of matching the teacher's pairwise cosines within a batch; 0: off",
    "min_crop_frames": "cut each batch to a random length from this many frames to the full crop "
                       "(e.g. 100: 1 s, for one-second clips); 0: full crops",
    "train_crop_frames": "training crop in frames (e.g. 300: the 3 s inference windows); 0: the encoder's "
                         "crop (--crop-frames, or --init's)",
    "progress": "progress bar per epoch",
}


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().split("x")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MELSxFRAMES such as 128x2, got {text!r}") from None


def _role(text: str) -> str | None:
    return None if text.lower() in ("", "none", "all") else text


_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def add_config_options(parser: argparse.ArgumentParser, cls, helps: dict[str, str], *, skip=()) -> None:
    """One option per field of dataclass ``cls`` (``--field-name``), its default taken from the dataclass so
    each default is written once. Booleans get ``--x/--no-x``; ``tuple[float, ...]`` fields take several values."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = helps.get(f.name, f.name.replace("_", " "))
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif f.type.startswith("tuple[float"):
            parser.add_argument(flag, dest=f.name, type=float, nargs="*", default=default, help=text)
        elif f.name == "role" or f.name.endswith("_role"):
            parser.add_argument(flag, dest=f.name, type=_role, default=default, help=text + " ('all': every row)")
        else:
            parser.add_argument(flag, dest=f.name, type=_TYPES[f.type], default=default, help=text)


def config_from_args(cls, args: argparse.Namespace, **fixed):
    """An instance of dataclass ``cls`` from the options :func:`add_config_options` added, plus ``fixed``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from asit_embed import load_encoder

    encoder = load_encoder(args.checkpoint, backend=args.backend, precision=args.precision, device=args.device,
                           vad=args.vad)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    emb = encoder.embed_batch(args.clips, batch_size=args.batch_size, progress=progress)
    if args.out:
        np.save(args.out, emb)
        print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.out}")
    else:
        for path, e in zip(args.clips, emb):
            print(path, " ".join(f"{v:.5f}" for v in e))
    return 0


def _encoder(args: argparse.Namespace) -> dict:
    """The encoder settings of a training run: the preset with the command line's overrides, or with
    ``--init``, only the overrides (the rest comes from the initial checkpoint)."""
    from asit_embed import model

    overrides = {k: v for k, v in dict(patch_size=args.patch, patch_stride=args.stride or args.patch,
                                       crop_frames=args.crop_frames, depth=args.depth,
                                       drop_path=args.drop_path, max_freq_hz=args.max_freq_hz).items()
                 if v is not None}
    return getattr(model, f"asit_{args.preset}")(**overrides).to_dict() if not args.init else overrides


def cmd_train(args: argparse.Namespace) -> int:
    from asit_embed.training.augment import AugmentConfig
    from asit_embed.training.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args, data=tuple(args.data), out_dir=args.out, encoder=_encoder(args),
                           dev_data=tuple(args.dev_data) if args.dev_data else None,
                           augment=config_from_args(AugmentConfig, args))
    record = train(cfg, resume=args.resume)
    print(json.dumps(record))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from asit_embed.training.pretrain import PretrainConfig, plot_log, pretrain

    cfg = config_from_args(PretrainConfig, args, data=tuple(args.data), out_dir=args.out, encoder=_encoder(args))
    record = pretrain(cfg, resume=args.resume)
    plot_log(Path(args.out) / "log.jsonl", Path(args.out) / "losses.png")
    print(json.dumps(record))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from asit_embed import load_encoder
    from asit_embed.calibration import Calibration
    from asit_embed.scoring import ASNorm, checkpoint_scoring  # the registry's own choice and AS-norm
    from asit_embed.training.data import load_sources
    from asit_embed.training.metrics import PROTOCOLS, enrollment_split, evaluate_embeddings, plot_evaluation
    from asit_embed.training.open_set import calibrated_open_set, plot_open_set_det

    encoder = load_encoder(args.checkpoint, precision=args.precision, device=args.device)
    items = load_sources(args.data, role=args.role)
    protocol = {**PROTOCOLS[args.protocol], **{k: getattr(args, k) for k in ("n_enroll", "max_probes", "min_clips")
                                                if getattr(args, k) is not None}}
    scoring = checkpoint_scoring(encoder.metadata) if args.scoring == "checkpoint" else args.scoring
    normalize = None
    if scoring == "as-norm":
        as_norm = ASNorm.from_metadata(encoder.metadata)
        if as_norm is None:
            raise SystemExit("error: --scoring as-norm needs a checkpoint that carries an AS-norm cohort "
                             "(tools/calibrate.py writes one)")
        normalize = as_norm.score
    emb = encoder.embed_batch([it.path for it in items], progress=args.progress)
    res = evaluate_embeddings(emb, [it.speaker for it in items], [it.path for it in items], open_set=True,
                              normalize=normalize, **protocol)
    speakers, keys = [it.speaker for it in items], [it.path for it in items]
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    table = (encoder.metadata.get("calibrations") or {}).get(scoring)
    shipped = None if table is None else Calibration.from_dict(table)
    calibrated = calibrated_open_set({args.protocol: (x, speakers, *enrollment_split(keys, speakers, **protocol))},
                                     sizes=args.sizes, fpir=args.fpir, shipped=shipped, normalize=normalize,
                                     scoring=scoring).get(args.protocol, {})
    summary = {"checkpoint": str(args.checkpoint or "default"), "data": [str(d) for d in args.data],
               "role": args.role, "protocol": {"name": args.protocol, **protocol}, "precision": encoder.precision,
               "scoring": scoring, **res.summary(),
               "calibrated_open_set": {"fpir_target": args.fpir,
                                       "shipped": "the checkpoint's" if shipped else "cross-validated (checkpoint has none)",
                                       **{str(k): v for k, v in calibrated.items() if k != "det"}}}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot_evaluation(res, args.plot, score_name=f"{scoring} score")
    if args.det and calibrated:
        plot_open_set_det({args.protocol: calibrated}, args.det, fpir=args.fpir)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from asit_embed import load_encoder
    from asit_embed.export import export_onnx

    encoder = load_encoder(args.checkpoint)
    path = export_onnx(encoder.model, args.onnx, fingerprint=encoder.fingerprint)
    print(f"wrote {path} (encoder {encoder.fingerprint}; inputs spec (batch, {encoder.config.n_mels}, frames) "
          f"and lengths (batch,), output embedding (batch, {encoder.model.window_dim}) per window; "
          f"clip embeddings of {encoder.dim} dims)")
    return 0


def _add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """The encoder settings ``train`` and ``pretrain`` share; with ``--init`` they override the checkpoint's."""
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--patch", type=_pair, help="patch size MELSxFRAMES (default 128x2)")
    parser.add_argument("--stride", type=_pair, help="patch stride MELSxFRAMES (default: the patch size)")
    parser.add_argument("--crop-frames", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--drop-path", type=float)
    parser.add_argument("--max-freq-hz", type=float,
                        help="zero mel bins above this frequency (3800: 8 kHz and wideband audio embed alike; "
                             "0: the full band)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the training commands' options (generated from their config dataclasses, which live in
    :mod:`asit_embed.training`) are added only when ``command`` is one of them or ``None``, so that other
    commands never import the training code."""
    training = command in (None, "train", "pretrain")
    p = argparse.ArgumentParser(prog="asit-embed", description=__doc__, formatter_class=_FORMAT)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", formatter_class=_FORMAT, help="embed audio files")
    e.add_argument("clips", nargs="+", help="audio files (wav, flac, ogg, mp3, ...)")
    e.add_argument("--out", help="write an (n, dim) float32 .npy instead of printing")
    e.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar counting clips (default: on when stderr is a terminal)")
    e.add_argument("--device", default="cpu", help="where the network runs: cpu, cuda, cuda:1, ...")
    e.add_argument("--vad", action="store_true", help="keep only speech (Silero VAD: pip install 'asit-embed[vad]')")
    e.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="what runs the network (onnx: ONNX Runtime, needs asit-embed[onnx])")
    e.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 where the CPU/GPU runs it natively (about 2x faster, cosine >= 0.999 to float32), else float32")
    e.set_defaults(func=cmd_embed)

    sub.add_parser("doctor", formatter_class=_FORMAT, help="check that torchaudio imports; --fix makes it import on a CPU-only machine")
    x = sub.add_parser("export", formatter_class=_FORMAT, help="export the encoder network to ONNX")
    x.add_argument("--onnx", required=True, help="output .onnx file")
    x.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("train", formatter_class=_FORMAT, help="train an encoder with AAM-softmax (resumable; works under torchrun)")
    t.add_argument("--data", required=True, nargs="+",
                   help="manifest .csv, folder per speaker, or .zip/.tar.gz of either; several train together "
                        "(speaker ids become <corpus>/<speaker>)")
    t.add_argument("--out", default="runs/train", help="run folder (config, log.jsonl, last.pt, best.pt)")
    t.add_argument("--dev-data", nargs="+", help="dev set(s) (default: --data)")
    _add_encoder_options(t)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    if training:
        from asit_embed.training.augment import AugmentConfig
        from asit_embed.training.train import TrainConfig

        add_config_options(t, TrainConfig, TRAIN_HELP, skip=("data", "out_dir", "dev_data", "encoder", "augment"))
        augment_help = {f.name: "augmentation setting (a p-* of 0 switches it off)"
                        for f in dataclasses.fields(AugmentConfig)}
        augment_help.update(p_reverb="share of batches reverberated, each clip in a room of a simulated bank "
                                     "(needs pip install 'asit-embed[train]')",
                            rt60_low="shortest reverberation time of the simulated rooms, seconds",
                            rt60_high="longest reverberation time of the simulated rooms, seconds",
                            rooms="number of simulated rooms", room_seed="seed of the simulated rooms")
        add_config_options(t, AugmentConfig, augment_help)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("pretrain", formatter_class=_FORMAT, help="ASiT self-supervised pretraining (GMML + local-global distillation)")
    r.add_argument("--data", required=True, nargs="+",
                   help="manifest .csv, folder, or archive; several pretrain together (labels are ignored)")
    r.add_argument("--out", default="runs/pretrain", help="run folder (log.jsonl, losses.png, last.pt, encoder.pt)")
    _add_encoder_options(r)
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    if training:
        from asit_embed.training.pretrain import PretrainConfig

        add_config_options(r, PretrainConfig, PRETRAIN_HELP, skip=("data", "out_dir", "encoder", "mask_ratio"))
    r.set_defaults(func=cmd_pretrain)

    v = sub.add_parser("evaluate", formatter_class=_FORMAT, help="unseen-speaker protocol: top-1, EER, minDCF, open-set EER, TPIR at FPIR 1 %%")
    v.add_argument("--data", required=True, nargs="+", help="dev set(s): several are pooled, speakers kept apart")
    v.add_argument("--role", type=_role, default="dev")
    v.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    v.add_argument("--protocol", choices=("speechocean762", "words"), default="speechocean762",
                   help="speechocean762: 5 enrollment clips, the rest probes; words (one-second word corpora): "
                        "speakers with >= 8 clips, 3 enroll, up to 20 probes")
    v.add_argument("--n-enroll", type=int, help="override the protocol's enrollment clips per speaker")
    v.add_argument("--max-probes", type=int, help="override the protocol's probes per speaker")
    v.add_argument("--min-clips", type=int, help="override the protocol's fewest clips for a speaker to count")
    v.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto")
    v.add_argument("--device", default="cpu", help="where the network runs: cpu, cuda, cuda:1, ...")
    v.add_argument("--scoring", choices=("checkpoint", "cosine", "as-norm"), default="checkpoint",
                   help="how trials are scored: as a registry does by default with this checkpoint (its "
                        "'scoring' metadata), cosine, or AS-norm against the cohort the checkpoint carries")
    v.add_argument("--out", help="write the JSON summary here")
    v.add_argument("--plot", help="write score histograms + DET curve to this PNG")
    v.add_argument("--fpir", type=float, default=0.01,
                   help="open-set operating point: share of unknown callers accepted (by enrolled-set size)")
    v.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 25, 100],
                   help="enrolled-set sizes for the open-set measurement (those that half the speakers allow)")
    v.add_argument("--det", help="write the open-set DET plot (FNIR against FPIR) to this PNG")
    v.add_argument("--progress", action="store_true")
    v.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), "")
    if command == "doctor":  # before anything that imports torch or torchaudio
        from asit_embed.doctor import main as doctor

        return doctor([a for a in argv if a != "doctor"])
    args = build_parser(command).parse_args(argv)
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
