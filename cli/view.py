"""`bwarea view`: a local web app to replay, compare, watch live and play (see docs/viewer.md).

    bwarea view                                   # every run under ./runs, at http://127.0.0.1:8000
    bwarea view runs/evaluate/a runs/evaluate/b --port 8001
    bwarea view runs/evaluate/spring --export spring-3.gif --episode 3 --stop 200   # a Crafter episode as a GIF
"""

from __future__ import annotations

import sys
from pathlib import Path

from cli.options import command, new_parser, parse_options
from viewer.store import RunStore, ViewerError, discover

PROG = "bwarea view"

DEFAULT_ROOTS = ["runs"]


def build_parser():
    parser = new_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("runs", type=str, nargs="*", default=DEFAULT_ROOTS, metavar="RUN_DIR",
                        help="Run directories, or directories holding runs (searched 5 levels down); default ./runs.")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
    parser.add_argument("--host", type=str, default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the viewer "
                             "and its runs to the network).")
    parser.add_argument("--play_out", type=str, default="runs/play",
                        help="Where games played in the browser are saved (default runs/play; listed as runs too).")
    parser.add_argument("--textworld_cache_dir", type=str | None, default=None, help="TextWorld game cache for the play page.")
    parser.add_argument("--bbh_data_dir", type=str | None, default=None, help="BIG-Bench Hard copy for the play page ($BWAREA_BBH_DIR).")
    parser.add_argument("--export", type=str | None, default=None, metavar="OUT.gif|OUT.mp4",
                        help="Write a Crafter episode of the one RUN_DIR as an animation instead of serving.")
    parser.add_argument("--episode", type=int, default=0, help="With --export: the episode (line) index in the run.")
    parser.add_argument("--start", type=int, default=0, help="With --export: first step.")
    parser.add_argument("--stop", type=int | None, default=None, help="With --export: last step (default: the episode's end).")
    parser.add_argument("--fps", type=float, default=8.0, help="With --export: frames per second.")
    return parser


def export(run_dir: str, out: str, episode: int, start: int, stop: int | None, fps: float) -> Path:
    """Render episode `episode` of the run in `run_dir` to `out` (.gif or .mp4), written atomically."""
    from common.files import atomic_write
    from viewer.frames import FrameRenderer

    path = Path(run_dir)
    found = [(p, kind) for p, kind in discover(path) if p == path.resolve()]
    if not found or found[0][1] == "training":
        raise ViewerError(f"{run_dir} is not an evaluation or play run directory (evaluation.json + episodes.jsonl, "
                          "or episode.json); --export needs exactly one.")
    run = RunStore([path]).runs()[0]
    record = run.record(episode)
    suffix = Path(out).suffix.lower()
    data = FrameRenderer().animation((run.id, episode), record, start, stop, suffix, fps,
                                     run.env_options(str(record.get("env"))))
    atomic_write(Path(out), lambda temp: Path(temp).write_bytes(data))
    return Path(out)


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    if args.export is not None:
        if len(args.runs) != 1:
            raise ViewerError(f"--export takes exactly one RUN_DIR, got {len(args.runs)}.")
        path = export(args.runs[0], args.export, args.episode, args.start, args.stop, args.fps)
        print(f"wrote {path}")
        return 0
    missing = [root for root in args.runs if not Path(root).is_dir()]
    if missing and args.runs != DEFAULT_ROOTS:
        raise ViewerError(f"{', '.join(missing)}: no such directory; give run directories or folders holding runs.")
    import uvicorn

    from viewer.app import create_app

    options = {key: getattr(args, key) for key in ("textworld_cache_dir", "bbh_data_dir") if getattr(args, key)}
    app = create_app([root for root in args.runs if Path(root).is_dir()], play_out=args.play_out, play_options=options)
    print(f"bwarea view: serving {', '.join(args.runs)} at http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
