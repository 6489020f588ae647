"""The scale-out roles, one command each (docs/operations.md):

    cshare server          a Compute Share API replica (N of them; the dispatcher in each
                           is guarded by the `dispatcher` lease, so only one works)
    cshare prefect-server  a Prefect API replica, `prefect server start --no-services`
                           (N of them, all on one PostgreSQL and one Redis)
    cshare services        Prefect's background services and Compute Share's background
                           loops (one meant to run; a second waits on an advisory lock)
    cshare agent start     an agent (one per machine)

`cshare up` runs the same processes on one machine; the Prefect environment is built
in api.cli.up.prefect_env for both.
"""
