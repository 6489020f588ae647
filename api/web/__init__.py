"""The web console: server-rendered pages (Jinja2, a little htmx) on the API process.

`install(app)` mounts the pages at `/` behind the API routes, with their assets under
`/static` (htmx 2.0.11 vendored as static/htmx.min.js, 0BSD licence; no CDN at run time).
See api/web/app.py for how the mount stays out of the API's way, api/web/session.py and
api/web/csrf.py for sign-in cookies and CSRF tokens.
"""

from api.web.app import install

__all__ = ["install"]
