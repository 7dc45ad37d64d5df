"""The roost console: runs, traces as waterfalls, the gates inbox and the live actor tree,
in a browser (server-rendered pages) and as a JSON API under `/api/v1/`.

`create_app(system, token=...)` gives the aiohttp application; `roost console --store
DIR` serves a store, `roost run app.py --console PORT` a live system. Modules: `app`
(the application, its security middleware, `serve`), `auth` (the token, sessions,
CSRF, sign-in brake), `problems` (errors as RFC 9457 problem details), `views` (what
is shown, shared by the API and the pages), `api`, `openapi` and `pages`.
"""

from roost.console.app import create_app, serve
from roost.console.auth import load_token

__all__ = ["create_app", "load_token", "serve"]
