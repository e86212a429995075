"""`bwarea view`: a local web app over evaluation, play and training run directories (docs/viewer.md).

    from viewer import create_app, RunStore
    app = create_app(["runs"])        # Starlette ASGI app: runs list, replay, compare, live watch, play, curves

Modules: store (run discovery, episode index, pages of steps), frames (Crafter frames from seed + actions,
GIF/MP4), games (browser play through evaluation.play.Session), app (pages and JSON API); the `bwarea view`
command is cli/view.py.
Only starlette and the standard library load at start-up; torch, crafter and TextWorld load on first use.
"""

from viewer.app import create_app
from viewer.store import BadRun, RunNotFound, RunStore, ViewerError

__all__ = ["BadRun", "RunNotFound", "RunStore", "ViewerError", "create_app"]
