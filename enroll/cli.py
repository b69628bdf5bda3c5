"""``asit-enroll`` command line: manage a speaker registry and identify or verify speakers."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone


def _open(args):
    from asit_embed import load_encoder
    from enroll import SpeakerRegistry

    encoder = load_encoder(args.checkpoint, precision=args.precision)
    return SpeakerRegistry(args.registry, encoder=encoder, threshold=args.threshold, as_norm=args.as_norm)


def cmd_add(args) -> int:
    with _open(args) as reg:
        spk = reg.enroll(args.name, args.clips, replace=args.replace)
    if args.json:
        print(json.dumps(spk.to_dict()))
    else:
        print(f"enrolled {spk.name!r}: {spk.n_clips} clip(s), {spk.seconds:.1f} s of speech")
    return 0


def cmd_identify(args) -> int:
    with _open(args) as reg:
        results = reg.identify_embeddings(reg.encoder.embed_batch(args.clips), k=args.k)
        threshold = reg.threshold
    if args.json:
        print(json.dumps([{"clip": c, "matches": [m.to_dict() for m in matches]}
                          for c, matches in zip(args.clips, results)]))
        return 0
    for clip, matches in zip(args.clips, results):
        best = next((m.name for m in matches if m.accepted), None)
        print(f"{clip}: {best if best else 'unknown'}  (threshold {threshold:.3f})")
        for rank, m in enumerate(matches, 1):
            print(f"  {rank}. {m.name:<24} {m.score:7.3f}  {'accept' if m.accepted else 'reject'}")
    return 0


def cmd_verify(args) -> int:
    with _open(args) as reg:
        m = reg.verify(args.name, args.clip)
    if args.json:
        print(json.dumps(m.to_dict()))
    else:
        print(f"{args.clip} vs {m.name!r}: score {m.score:.3f} -> {'same speaker' if m.accepted else 'different'}")
    return 0 if m.accepted else 1


def cmd_list(args) -> int:
    with _open(args) as reg:
        speakers = [reg.speaker(n) for n in reg.names()]
    if args.json:
        print(json.dumps([s.to_dict() for s in speakers]))
        return 0
    print(f"{'name':<24} {'clips':>5} {'speech (s)':>10}  enrolled")
    for s in speakers:
        when = datetime.fromtimestamp(s.created, timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(f"{s.name:<24} {s.n_clips:>5} {s.seconds:>10.1f}  {when}")
    print(f"{len(speakers)} speaker(s)")
    return 0


def cmd_remove(args) -> int:
    with _open(args) as reg:
        reg.remove(args.name)
    print(json.dumps({"removed": args.name}) if args.json else f"removed {args.name!r}")
    return 0


def cmd_rename(args) -> int:
    with _open(args) as reg:
        reg.rename(args.old, args.new)
    print(json.dumps({"renamed": args.old, "to": args.new}) if args.json else f"renamed {args.old!r} to {args.new!r}")
    return 0


def cmd_serve(args) -> int:
    from asit_embed import load_encoder
    from enroll.server import create_app, make_server

    encoder = load_encoder(args.checkpoint, precision=args.precision)
    app = create_app(args.registry, encoder=encoder, threshold=args.threshold, as_norm=args.as_norm,
                     max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds)
    try:
        server = make_server(app, host=args.host, port=args.port, threads=args.threads)
    except OSError as err:
        print(f"asit-enroll serve: error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"serving registry {args.registry!r} on http://{args.host}:{server.effective_port}/ "
          f"(waitress, {args.threads} threads); Ctrl-C stops", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["enroll"].registries.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asit-enroll", description=__doc__)
    p.add_argument("--registry", help="registry directory (created if missing); required")
    p.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 where native (about 2x faster), else float32; either serves the same registry")
    p.add_argument("--threshold", type=float, help="accept threshold (default: the calibrated one)")
    p.add_argument("--as-norm", action="store_true", help="AS-norm scoring against the shipped cohort")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="enroll a speaker from one or more clips")
    a.add_argument("name")
    a.add_argument("clips", nargs="+")
    a.add_argument("--replace", action="store_true", help="replace the speaker's clips instead of adding")
    a.set_defaults(func=cmd_add)
    i = sub.add_parser("identify", help="who is speaking in each clip")
    i.add_argument("clips", nargs="+")
    i.add_argument("--k", type=int, default=5)
    i.set_defaults(func=cmd_identify)
    v = sub.add_parser("verify", help="is this clip the named speaker (exit 0 yes, 1 no)")
    v.add_argument("name")
    v.add_argument("clip")
    v.set_defaults(func=cmd_verify)
    sub.add_parser("list", help="enrolled speakers").set_defaults(func=cmd_list)
    r = sub.add_parser("remove", help="delete a speaker")
    r.add_argument("name")
    r.set_defaults(func=cmd_remove)
    n = sub.add_parser("rename", help="rename a speaker")
    n.add_argument("old")
    n.add_argument("new")
    n.set_defaults(func=cmd_rename)
    s = sub.add_parser("serve", help="HTTP API and upload page on the production WSGI server (waitress)")
    s.add_argument("--registry", default=argparse.SUPPRESS, help="registry directory (same as before the command)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--threads", type=int, default=4, help="request threads (default 4)")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    s.add_argument("--max-seconds", type=float, default=60.0, help="longest clip accepted (default 60 s)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.registry is None:
        parser.error("the following arguments are required: --registry")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from asit_embed import AudioError, CheckpointError
    from enroll import RegistryError, UnknownSpeakerError

    try:
        return args.func(args)
    except (AudioError, CheckpointError, RegistryError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"asit-enroll {args.command}: error: {err}", file=sys.stderr)
        return 2
    except UnknownSpeakerError as err:
        print(f"asit-enroll {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
