"""The service base of every background loop (see orgs.service, where it lives so that
loops below flows/ can use it too)."""

from orgs.service import BACKOFF_MAX_S, Service, ServiceHealth, backoff_delay, describe_error

__all__ = ["BACKOFF_MAX_S", "Service", "ServiceHealth", "backoff_delay", "describe_error"]
