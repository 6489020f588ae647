"""The background loops of the control plane, on one service base (flows.dispatch.service).

- `dispatcher.Dispatcher`: the job ledger and Prefect kept in step; its cycle also
  reconciles run states and fires the control-plane schedules;
- `orgs.notifications.Deliverer` (in orgs: it may not import flows): the notification
  outbox delivered, machines gone offline noticed;
- `housekeeping.DatasetGarbageCollector`: stored dataset bytes nothing refers to purged.

Which of them run in a process, and the cascade hooks, are listed in `flows.wiring`.
"""
