"""The viewer's web app: HTML pages (one shell, drawn by viewer.js) and the JSON API they read.

    app = create_app(["runs"], play_out="runs/play")   # a Starlette ASGI app; `bwarea view` serves it with uvicorn

Pages: /  (runs), /run?run=ID (episodes, live), /replay?run=ID&episode=N, /compare?a=ID&b=ID,
/play, /curves?run=ID. API (JSON unless said otherwise; errors are {"error": message} with an HTTP code):

    GET  /api/runs                                   every run's row (settings, metrics ± se, live, problems)
    GET  /api/run?run=ID                             one run: row, settings, summary
    GET  /api/episodes?run=ID                        the episode index (header fields per episode)
    GET  /api/episode?run=ID&episode=N               one episode without its steps, plus an outline for the scrubber
    GET  /api/steps?run=ID&episode=N&start=K&count=C a page of steps with their traces
    GET  /api/frame?run=ID&episode=N&step=K          PNG, Crafter only, rendered from the seed and actions
    GET  /api/export?run=ID&episode=N&format=gif     animated GIF (or mp4) of frames start..stop
    GET  /api/replay-check?run=ID&episode=N          how far the frames' replay agrees with the record
    GET  /api/compare?a=ID&b=ID                      per-episode table of two evaluations: who won
    GET  /api/curves?run=ID                          training metrics per column, [[step, value], ...]
    GET  /files/ID/PATH                              a file inside a run (plots, report.md); nothing outside it
    GET  /api/envs                                   environment names for the play page
    POST /api/play {env, seed, split, agent}         start a browser game; then GET /api/play/G,
    POST /api/play/G/act {action}, POST /api/play/G/quit, GET /api/play/G/frame (PNG)

Nothing here writes to disk except a played game, into its own output folder (viewer.games).
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import mimetypes
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from viewer.frames import FrameRenderer, png_bytes
from viewer.games import Games
from viewer.store import Run, RunNotFound, RunStore, ViewerError

STATIC = Path(str(resources.files("viewer") / "static"))
PAGES = ("/", "/run", "/replay", "/compare", "/play", "/curves")


def _json(data: Any, status: int = 200) -> JSONResponse:
    # NaN / inf (a diverged loss) are not JSON: send them as null
    return JSONResponse(json.loads(json.dumps(data, default=str), parse_constant=lambda _: None), status_code=status)


def _int(request: Request, name: str, default: int | None = None) -> int:
    value = request.query_params.get(name)
    if value is None:
        if default is None:
            raise ViewerError(f"the request needs the query parameter {name}=<integer>.")
        return default
    try:
        return int(value)
    except ValueError:
        raise ViewerError(f"query parameter {name} must be an integer, got {value!r}.") from None


def _param(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise ViewerError(f"the request needs the query parameter {name}=<run id> (ids are listed at /api/runs).")
    return value


def compare_runs(a: Run, b: Run) -> dict[str, Any]:
    """Episodes of two runs matched by (environment, evaluation seed, episode index): the same world or game for
    both. A row's winner has the higher score, then the higher return; equal both ways is a tie. Of an episode
    recorded more than once (replayed after a fault), the first fault-free record counts, else the latest;
    errored records never count (as in the evaluation's own summary)."""
    def keyed(run: Run) -> dict[tuple[str, int, int], dict[str, Any]]:
        rows: dict[tuple[str, int, int], dict[str, Any]] = {}
        for entry in run.episodes():
            header = entry.header
            if entry.problem or header.get("error") or "env" not in header:
                continue
            key = (header["env"], int(header.get("seed", 0)), int(header.get("episode", 0)))
            if key not in rows or rows[key].get("faulted"):
                rows[key] = {**header, "index": entry.index}
        return rows

    left, right = keyed(a), keyed(b)
    rows, wins = [], {"a": 0, "b": 0, "tie": 0}
    for key in sorted(set(left) & set(right)):
        x, y = left[key], right[key]
        ours = (float(x.get("score") or 0), float(x.get("return") or 0))
        theirs = (float(y.get("score") or 0), float(y.get("return") or 0))
        winner = "a" if ours > theirs else "b" if theirs > ours else "tie"
        wins[winner] += 1
        rows.append({"env": key[0], "seed": key[1], "episode": key[2], "env_seed": x.get("env_seed"),
                     "a": x, "b": y, "winner": winner})
    only = {"a": len(set(left) - set(right)), "b": len(set(right) - set(left))}
    return {"a": a.id, "b": b.id, "rows": rows, "wins": wins, "unmatched": only}


def training_curves(run: Run) -> dict[str, Any]:
    """Every logged column of a training run as [[step, value], ...] (rows without a step are left out)."""
    from common.logs import read_metrics

    columns: dict[str, list[list[float]]] = {}
    for row in read_metrics(run.path):
        step = row.get("step")
        if step is None:
            continue
        for name, value in row.items():
            if name not in ("step", "epoch") and math.isfinite(value):
                columns.setdefault(name, []).append([step, value])
    return {"run": run.id, "columns": columns}


def create_app(roots: Sequence[str | Path], play_out: str | Path = "runs/play",
               play_options: dict[str, Any] | None = None) -> Starlette:
    """The viewer over the runs at or under `roots`; browser games are saved under `play_out` (also served)."""
    play_out = Path(play_out)
    serve = [Path(root) for root in roots]
    if not any(_inside(play_out, root) for root in serve):
        serve.append(play_out)
    store = RunStore(serve)
    frames = FrameRenderer()
    games = Games(play_out, play_options)
    shell = (STATIC / "index.html").read_text()

    def page(request: Request) -> HTMLResponse:
        """The HTML shell; a page about a run or episode that cannot be shown says why, with the HTTP code."""
        error, status = "", 200
        try:
            if request.url.path in ("/run", "/curves"):
                store.get(_param(request, "run")).settings()
            elif request.url.path == "/replay":
                store.get(_param(request, "run")).episode(_int(request, "episode"))
            elif request.url.path == "/compare":
                for side in ("a", "b"):
                    store.get(_param(request, side)).settings()
        except ViewerError as failure:
            error, status = str(failure), failure.status
        banner = f'<div id="server-error" class="error">{html.escape(error)}</div>' if error else ""
        return HTMLResponse(shell.replace("<!--SERVER-ERROR-->", banner), status_code=status)

    async def runs(request: Request) -> Response:
        return _json([run.describe() for run in store.runs()])

    async def run_detail(request: Request) -> Response:
        run = store.get(_param(request, "run"))
        return _json({"row": run.describe(), "settings": run.settings(), "summary": run.summary(), "plots": run.plots()})

    async def episodes(request: Request) -> Response:
        run = store.get(_param(request, "run"))
        run.settings()
        return _json({"run": run.id, "episodes": [entry.to_dict() for entry in run.episodes()]})

    async def episode(request: Request) -> Response:
        return _json(store.get(_param(request, "run")).episode(_int(request, "episode")))

    async def steps(request: Request) -> Response:
        run = store.get(_param(request, "run"))
        return _json(run.steps(_int(request, "episode"), _int(request, "start", 0), _int(request, "count", 50)))

    def _replay_inputs(request: Request) -> tuple[tuple[str, int], dict[str, Any], dict[str, Any]]:
        run = store.get(_param(request, "run"))
        index = _int(request, "episode")
        record = run.record(index)
        return (run.id, index), record, run.env_options(str(record.get("env")))

    def frame(request: Request) -> Response:
        key, record, options = _replay_inputs(request)
        png = frames.png(key, record, _int(request, "step"), options)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def replay_check(request: Request) -> Response:
        key, record, options = _replay_inputs(request)
        return _json(frames.check(key, record, options))

    def export(request: Request) -> Response:
        key, record, options = _replay_inputs(request)
        kind = request.query_params.get("format", "gif")
        stop = request.query_params.get("stop")
        data = frames.animation(key, record, _int(request, "start", 0), None if stop is None else _int(request, "stop"),
                                f".{kind}", float(request.query_params.get("fps", 8)), options)
        name = f"{record.get('env', 'episode').replace('/', '_')}-{key[1]}.{kind}"
        return Response(data, media_type="image/gif" if kind == "gif" else "video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def compare(request: Request) -> Response:
        a, b = store.get(_param(request, "a")), store.get(_param(request, "b"))
        a.settings(), b.settings()
        return _json(compare_runs(a, b))

    def curves(request: Request) -> Response:
        run = store.get(_param(request, "run"))
        if run.kind != "training":
            raise ViewerError(f"run {run.id} is an {run.kind} run; training curves belong to pretraining and "
                              "fine-tuning runs (logs/csv).")
        return _json(training_curves(run))

    async def run_file(request: Request) -> Response:
        """/files/<run id>/<path in the run>: the longest run id that prefixes the path names the run."""
        path = request.path_params["path"]
        parts = path.split("/")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                run = store.get("/".join(parts[:cut]))
            except RunNotFound:
                continue
            target = (run.path / "/".join(parts[cut:])).resolve()
            if not _inside(target, run.path.resolve()):
                return _json({"error": f"{path!r} points outside run {run.id}; only files inside a run are served."},
                             403)
            if not target.is_file():
                raise RunNotFound(f"run {run.id} has no file {'/'.join(parts[cut:])!r}.")
            media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            return Response(target.read_bytes(), media_type=media)
        if ".." in parts:
            return _json({"error": f"{path!r} points outside the runs this viewer serves; '..' is not allowed."}, 403)
        raise RunNotFound(f"{path!r} is not a file of any run this viewer serves.")

    def environment_names(request: Request) -> Response:
        import envs

        return _json({"envs": envs.names()})

    def play_start(request: Request, body: dict[str, Any]) -> Response:
        game = games.start(str(body.get("env") or ""), int(body.get("seed") or 0), str(body.get("split") or "test"),
                           body.get("agent") or None)
        return _json(_game_state(game))

    def _game_state(game: Any) -> dict[str, Any]:
        url = f"/api/play/{game.id}/frame?step={len(game.session.recorder.trajectory)}" if game.family == "crafter" else None
        return game.state(url)

    async def play(request: Request) -> Response:
        body = await _body(request)
        return await _threaded(play_start, request, body)

    async def play_state(request: Request) -> Response:
        return _json(_game_state(games.get(request.path_params["game"])))

    def play_act_sync(request: Request, body: dict[str, Any]) -> Response:
        game = games.get(request.path_params["game"])
        with game.lock:
            game.act(str(body.get("action", "")))
            return _json(_game_state(game))

    async def play_act(request: Request) -> Response:
        return await _threaded(play_act_sync, request, await _body(request))

    async def play_quit(request: Request) -> Response:
        game = games.get(request.path_params["game"])
        with game.lock:
            game.finish("quit")
            return _json(_game_state(game))

    def play_frame(request: Request) -> Response:
        game = games.get(request.path_params["game"])
        with game.lock:
            return Response(png_bytes(game.frame(frames.size)), media_type="image/png")

    async def handle_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ViewerError)
        return _json({"error": str(error)}, error.status)

    routes = [Route(path, page) for path in PAGES] + [
        Route("/api/runs", runs), Route("/api/run", run_detail), Route("/api/episodes", episodes),
        Route("/api/episode", episode), Route("/api/steps", steps), Route("/api/frame", frame),
        Route("/api/export", export), Route("/api/replay-check", replay_check), Route("/api/compare", compare),
        Route("/api/curves", curves),
        Route("/api/envs", environment_names), Route("/files/{path:path}", run_file),
        Route("/api/play", play, methods=["POST"]), Route("/api/play/{game}", play_state),
        Route("/api/play/{game}/act", play_act, methods=["POST"]),
        Route("/api/play/{game}/quit", play_quit, methods=["POST"]), Route("/api/play/{game}/frame", play_frame),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        games.close()   # unfinished browser games are saved when the viewer stops

    app = Starlette(routes=routes, exception_handlers={ViewerError: handle_error}, lifespan=lifespan,
                    middleware=[Middleware(RefuseParentSegments)])
    app.state.store, app.state.games, app.state.frames = store, games, frames
    return app


class RefuseParentSegments:
    """403 for any URL whose decoded path has a ".." segment: no request reaches outside the served runs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ".." in scope["path"].split("/"):
            message = f"{scope['path']!r} has a '..' segment; the viewer serves nothing outside its runs."
            await _json({"error": message}, 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ViewerError("the request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ViewerError("the request body must be a JSON object.")
    return body


async def _threaded(function: Any, *args: Any) -> Response:
    """Run a blocking call (a game step, an agent's suggestion) off the event loop."""
    return await run_in_threadpool(function, *args)


def _inside(path: Path, root: Path) -> bool:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents
