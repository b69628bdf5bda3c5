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

    encoder = load_encoder(args.checkpoint, precision=args.precision, device=args.device)
    return SpeakerRegistry(args.registry, encoder=encoder, threshold=args.threshold, as_norm=args.as_norm,
                           far=args.far, fpir=args.fpir, vad=args.vad, readonly=args.read_only,
                           adapt=not args.no_adapt)


def _progress(args) -> bool:
    """``--progress`` / ``--no-progress`` as given, else a bar only when stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress


def cmd_add(args) -> int:
    with _open(args) as reg:
        spk = reg.enroll(args.name, args.clips, replace=args.replace, allow_duplicates=args.allow_duplicates,
                         progress=_progress(args))
    if args.json:
        print(json.dumps(spk.to_dict()))
    else:
        print(f"enrolled {spk.name!r}: {spk.n_clips} clip(s), {spk.seconds:.1f} s of speech")
    return 0


def cmd_identify(args) -> int:
    with _open(args) as reg:
        results = reg.identify_embeddings(reg.encoder.embed_batch(args.clips, progress=_progress(args), vad=reg.vad),
                                          k=args.k)
        points = reg.operating_points()
    if args.json:
        print(json.dumps([{"clip": c, "matches": [m.to_dict() for m in matches],
                           "threshold": points["identify_threshold"]} for c, matches in zip(args.clips, results)]))
        return 0
    for clip, matches in zip(args.clips, results):
        best = next((m.name for m in matches if m.accepted), None)
        print(f"{clip}: {best if best else 'unknown'}  (threshold {points['identify_threshold']:.3f}: "
              f"{points['fpir']:.1%} of strangers accepted among {points['speakers']} speakers)")
        for rank, m in enumerate(matches, 1):
            print(f"  {rank}. {m.name:<24} {m.score:7.3f}  {'accept' if m.accepted else 'reject'}")
    return 0


def cmd_verify(args) -> int:
    with _open(args) as reg:
        m = reg.verify(args.name, args.clip)
        threshold, far = reg.verify_threshold, reg.far
    if args.json:
        print(json.dumps({**m.to_dict(), "threshold": round(threshold, 4)}))
    else:
        print(f"{args.clip} vs {m.name!r}: score {m.score:.3f} -> {'same speaker' if m.accepted else 'different'}"
              f"  (threshold {threshold:.3f}: {far:.1%} of impostor trials accepted)")
    return 0 if m.accepted else 1


def cmd_list(args) -> int:
    with _open(args) as reg:
        speakers = [reg.speaker(n) for n in reg.names()]
    if args.json:
        print(json.dumps([s.to_dict() for s in speakers]))
        return 0
    print(f"{'name':<24} {'clips':>5} {'seconds':>10}  enrolled")
    for s in speakers:
        when = datetime.fromtimestamp(s.created, timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(f"{s.name:<24} {s.n_clips:>5} {s.seconds:>10.1f}  {when}")
    print(f"{len(speakers)} speaker(s); seconds: of speech with --vad, of audio without")
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


def cmd_track(args) -> int:
    with _open(args) as reg:
        turns = reg.track(args.clip, window=args.window, hop=args.hop)
        threshold = reg.identify_threshold()
    if args.json:
        print(json.dumps({"clip": args.clip, "threshold": round(threshold, 4), "turns": [t.to_dict() for t in turns]}))
        return 0
    print(f"{args.clip}: {len(turns)} turn(s), threshold {threshold:.3f}")
    for t in turns:
        print(f"  {t.start:7.2f} – {t.end:7.2f} s  {t.name or 'unknown':<24} {t.score:6.3f}")
    return 0


def cmd_map(args) -> int:
    from enroll.embedding_map import plot_map

    with _open(args) as reg:
        names, x = reg.clip_embeddings()
    if not names:
        raise ValueError("the registry is empty: nothing to map")
    plot_map(names, x, args.out, method=args.method)
    print(json.dumps({"map": args.out, "clips": len(names), "speakers": len(set(names))}) if args.json else
          f"wrote {args.out}: {len(names)} clips of {len(set(names))} speakers")
    return 0


def cmd_backup(args) -> int:
    with _open(args) as reg:
        dest = reg.backup(args.dest)
        n = len(reg)
    print(json.dumps({"backup": str(dest), "speakers": n}) if args.json else
          f"backed up {n} speaker(s) to {str(dest)!r} (open it with --registry {dest})")
    return 0


def cmd_check(args) -> int:
    from pathlib import Path

    from enroll.errors import RegistryDatabaseError
    from enroll.salvage import salvage

    salvaged = None
    try:
        reg = _open(args)
    except RegistryDatabaseError:
        if not args.repair:
            raise
        damaged, n = salvage(str(Path(args.registry) / "registry.sqlite"))
        salvaged = f"salvaged {n} speaker(s) into a fresh database; the damaged file is kept as {damaged}"
        reg = _open(args)
    with reg:
        report = reg.check(repair=args.repair)
    if salvaged:
        report["repaired"].insert(0, salvaged)
    if args.json:
        print(json.dumps(report))
    else:
        for line in report["problems"]:
            print(f"problem: {line}")
        for line in report["repaired"]:
            print(f"repaired: {line}")
        for line in report["notes"]:
            print(f"note: {line}")
        print("ok" if report["ok"] else "problems found" + ("" if args.repair else "; run with --repair to fix"))
    return 0 if report["ok"] or args.repair else 1


def cmd_calibrate(args) -> int:
    with _open(args) as reg:
        if args.reset:
            reg.reset_calibration()
        elif not args.show:
            from asit_embed.audio import speaker_folders

            labelled = None if args.from_dir is None else speaker_folders(args.from_dir)
            reg.calibrate(labelled)
        points = reg.operating_points()
    if args.json:
        print(json.dumps(points))
        return 0
    cal = points["calibration"]
    where = cal if isinstance(cal, str) or cal is None else (
        f"{cal['kind']}: {cal['source']}, {cal['n_trials']} impostor trials")
    print(f"calibration  {where}\n"
          f"identify     threshold {points['identify_threshold']:.3f}  ({points['fpir']:.1%} of strangers accepted "
          f"among {points['speakers']} speakers; rises as speakers enroll)\n"
          f"verify       threshold {points['verify_threshold']:.3f}  ({points['far']:.1%} of impostor trials accepted)")
    return 0


def cmd_serve(args) -> int:
    import os
    import signal

    from asit_embed import load_encoder
    from enroll.server import LOOPBACK_HOSTS, create_app, make_server

    token = args.token or os.environ.get("ASIT_ENROLL_TOKEN") or None
    loopback = args.host in LOOPBACK_HOSTS or args.host.startswith("127.")
    if not loopback and token is None and not args.no_token:
        print(f"asit-enroll serve: error: listening on {args.host} lets other machines enroll and identify; "
              "set a token (--token or ASIT_ENROLL_TOKEN) that clients send as 'Authorization: Bearer <token>', "
              "or pass --no-token to serve without one", file=sys.stderr)
        return 2
    wildcard = args.host in ("0.0.0.0", "::", "")
    hosts = [*LOOPBACK_HOSTS, *([] if wildcard else [args.host]), *args.allowed_host]
    if wildcard and not args.allowed_host:
        hosts.append("*")  # any name this machine is reached by; the token guards it
    encoder = load_encoder(args.checkpoint, precision=args.precision, device=args.device)
    app = create_app(args.registry, encoder=encoder, threshold=args.threshold, as_norm=args.as_norm,
                     far=args.far, fpir=args.fpir, vad=args.vad, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                     max_files=args.max_files, max_request_seconds=args.max_request_seconds, allowed_hosts=hosts,
                     token=token, readonly=args.read_only, max_request_wall=args.max_request_wall,
                     adapt=not args.no_adapt)
    try:
        server = make_server(app, host=args.host, port=args.port, threads=args.threads)
    except OSError as err:
        print(f"asit-enroll serve: error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt  # unwinds server.run() into the finally below

    # Both set explicitly: a process started in the background by a shell inherits SIGINT as ignored.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serving registry {args.registry!r} on http://{args.host}:{server.effective_port}/ "
          f"(waitress, {args.threads} threads{', token required' if token else ''}); Ctrl-C or SIGTERM stops",
          flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.extensions["enroll"].registries.close()  # every connection closed: the WAL is folded into the file
        print("stopped; registry closed", flush=True)
    return 0


EPILOG = """exit status: 0 done (verify: the same speaker); 1 verify: a different speaker, check: problems
found, or the registry refused or failed (name taken, duplicate clip, damaged database); 2 bad input (bad
audio, unknown speaker, too little data to calibrate, bad usage). Errors are one line on stderr.
Options before the command may also follow it: asit-enroll identify x.wav --registry reg --json"""


def _global_options(*, defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, accepted before or after the command: the main parser holds the
    defaults, each command's copy leaves an option it was not given alone."""
    g = argparse.ArgumentParser(add_help=False)
    d = (lambda value: {"default": value}) if defaults else (lambda value: {"default": argparse.SUPPRESS})
    g.add_argument("--registry", help="registry directory (created if missing); required", **d(None))
    g.add_argument("--checkpoint", help="encoder checkpoint (default: the bundled one)", **d(None))
    g.add_argument("--device", **d("cpu"), help="where the encoder runs: cpu, cuda, cuda:1, ...")
    g.add_argument("--precision", choices=("auto", "float32", "bfloat16"), **d("auto"),
                   help="auto: bfloat16 where native (about 2x faster), else float32; either serves the same registry")
    g.add_argument("--fpir", type=float, **d(0.01),
                   help="identify: share of unknown callers accepted as someone enrolled, at the registry's size")
    g.add_argument("--far", type=float, **d(0.01), help="verify: share of impostor trials accepted")
    g.add_argument("--threshold", type=float, **d(None),
                   help="one fixed accept score for both, instead of --fpir / --far")
    g.add_argument("--no-adapt", action="store_true", **d(False),
                   help="use the shipped calibration as it is, not moved to the enrolled voices (from 5 speakers)")
    g.add_argument("--as-norm", action=argparse.BooleanOptionalAction, **d(None),
                   help="AS-norm scoring against the shipped cohort, or not (default: as the checkpoint recommends)")
    g.add_argument("--vad", action="store_true", **d(False),
                   help="keep only the speech of every clip (Silero VAD: pip install 'asit-embed[vad]')")
    g.add_argument("--json", action="store_true", **d(False), help="machine-readable output")
    g.add_argument("--read-only", action="store_true", **d(False),
                   help="open an existing registry for queries only (works on a read-only directory)")
    g.add_argument("-v", "--verbose", action="store_true", **d(False))
    return g


def build_parser() -> argparse.ArgumentParser:
    from asit_embed.cli import HelpFormatter as fmt
    p = argparse.ArgumentParser(prog="asit-enroll", description=__doc__, epilog=EPILOG, formatter_class=fmt,
                                parents=[_global_options(defaults=True)])
    sub = p.add_subparsers(dest="command", required=True)
    common = {"parents": [_global_options(defaults=False)], "formatter_class": fmt}
    a = sub.add_parser("add", help="enroll a speaker from one or more clips", **common)
    a.add_argument("name", help="the speaker's name (1-100 printable characters)")
    a.add_argument("clips", nargs="+", help="audio files of the speaker (wav, flac, ogg, mp3, ...)")
    a.add_argument("--replace", action="store_true", help="replace the speaker's clips instead of adding")
    a.add_argument("--allow-duplicates", action="store_true", help="enroll a clip that is already enrolled")
    a.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar counting clips (default: on when stderr is a terminal)")
    a.set_defaults(func=cmd_add)
    i = sub.add_parser("identify", help="who is speaking in each clip", **common)
    i.add_argument("clips", nargs="+", help="audio files, one answer each")
    i.add_argument("--k", type=int, default=5, help="best matches shown per clip")
    i.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar counting clips (default: on when stderr is a terminal)")
    i.set_defaults(func=cmd_identify)
    v = sub.add_parser("verify", help="is this clip the named speaker (exit 0 yes, 1 no)", **common)
    v.add_argument("name", help="the enrolled speaker the clip claims to be")
    v.add_argument("clip", help="audio file")
    v.set_defaults(func=cmd_verify)
    sub.add_parser("list", help="enrolled speakers", **common).set_defaults(func=cmd_list)
    t = sub.add_parser("track", help="who spoke when in one recording: a timeline of enrolled names", **common)
    t.add_argument("clip", help="a recording with one or more speakers")
    t.add_argument("--window", type=float, default=2.0, help="segment length in seconds")
    t.add_argument("--hop", type=float, default=1.0, help="seconds between segment starts")
    t.set_defaults(func=cmd_track)
    m = sub.add_parser("map", help="PNG of the enrolled clips in 2-D, coloured by speaker (who sounds like whom)",
                       **common)
    m.add_argument("--out", default="map.png", help="PNG to write")
    m.add_argument("--method", choices=("auto", "tsne", "pca"), default="auto",
                   help="auto: t-SNE from 10 clips on, PCA below")
    m.set_defaults(func=cmd_map)
    c = sub.add_parser("calibrate", help="fit the accept thresholds to your own voices (kept in the registry)",
                       description="Without options: from the enrolled speakers' own clips (leave-one-out). "
                                   "Needs at least 4 speakers and 150 impostor trials (e.g. 6 speakers x 6 clips).",
                       **common)
    c.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="labelled clips instead: one sub-folder of audio files per speaker (not enrolled)")
    c.add_argument("--reset", action="store_true", help="forget the registry's calibration; use the shipped one")
    c.add_argument("--show", action="store_true", help="only print the operating points and their calibration")
    c.set_defaults(func=cmd_calibrate)
    b = sub.add_parser("backup", help="copy the registry, while in use, into a new directory", **common)
    b.add_argument("dest", help="a new directory for the copy")
    b.set_defaults(func=cmd_backup)
    k = sub.add_parser("check", help="integrity of the database, templates and index (exit 1: problems)",
                       **common)
    k.add_argument("--repair", action="store_true",
                   help="fix what is found: salvage a damaged database, recompute templates, rebuild the index")
    k.set_defaults(func=cmd_check)
    r = sub.add_parser("remove", help="delete a speaker", **common)
    r.add_argument("name", help="the speaker to delete")
    r.set_defaults(func=cmd_remove)
    n = sub.add_parser("rename", help="rename a speaker", **common)
    n.add_argument("old", help="the enrolled name")
    n.add_argument("new", help="the new name")
    n.set_defaults(func=cmd_rename)
    s = sub.add_parser("serve", help="HTTP API and upload page on the production WSGI server (waitress)", **common)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    s.add_argument("--threads", type=int, default=4, help="request threads")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB")
    s.add_argument("--max-seconds", type=float, default=60.0, help="longest clip accepted, in seconds")
    s.add_argument("--max-files", type=int, default=20, help="most audio files in one request")
    s.add_argument("--max-request-seconds", type=float, default=300.0,
                   help="most seconds of audio in one request, all files together")
    s.add_argument("--max-request-wall", type=float, default=60.0,
                   help="seconds a request may spend reading and decoding its uploads (then 503)")
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every API call (or set ASIT_ENROLL_TOKEN)")
    s.add_argument("--no-token", action="store_true", help="serve beyond this machine without a token")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name clients use to reach the server (repeatable); loopback names always work")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.registry is None:
        parser.error("the following arguments are required: --registry")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from asit_embed import AudioError, CheckpointError
    from asit_embed.calibration import CalibrationError
    from enroll import RegistryError, UnknownSpeakerError

    try:
        return args.func(args)
    except RegistryError as err:  # before ValueError, its base
        print(f"asit-enroll {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (AudioError, CheckpointError, CalibrationError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"asit-enroll {args.command}: error: {err}", file=sys.stderr)
        return 2
    except UnknownSpeakerError as err:
        print(f"asit-enroll {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
