"""The embedded stack behind `cshare up`: Prefect server, the API with its dispatcher, and a
local agent, supervised in the foreground from one process.

Layout under `CSHARE_HOME` (created 0700):

    cshare.db                 the control plane (SQLite, unless CSHARE_DATABASE_URL is set)
    prefect/prefect.db        Prefect's own SQLite database and PREFECT_HOME
    secrets/prefect-auth      the generated PREFECT_SERVER_API_AUTH_STRING (0600)
    secrets/admin-password    the first admin's password, also printed once (0600)
    secrets/agent-token       the admin's personal token the local agent registers with (0600)
    agent/                    the local agent's config and state
    logs/*.log                each child's output, rotated by size (childlogs.py)
    stack.json                what the first start created (admin email, demo org)
    stack.pid                 PIDs of the running stack (supervisor and children)
    stack.status.json         each child's pid, state, restarts, last exit (status.py)
    stack.lock                held while a stack runs: one `cshare up` per home

Why children and not threads: each piece is what production runs separately (a Prefect
server, `cshare server`, `cshare agent start`), so the embedded stack
exercises the production processes. Each child gets its own session (a terminal Ctrl-C
reaches only the supervisor, which stops them in order: agent, API, Prefect) and, on
Linux, a parent-death signal, so even a SIGKILLed supervisor leaves no orphan behind.
Stopping is by PID: SIGTERM, wait, SIGKILL after a timeout, then any descendant that
outlived its parent (recorded with its start time, so a recycled PID is never hit).

Supervision (supervised.py, restarts.py): once everything is up, a child that exits is
cleaned up (its process group, then its recorded descendants) and started again with
exponential backoff (1 s doubling to 30 s, back to 1 s after 60 s up); five exits within
two minutes is reported as a crash loop and still retried. All of it runs on the main
thread: the parent-death signal belongs to the thread that spawned the child. A signal
ends supervision before the ordered stop, so nothing restarts during shutdown.
"""
