"""Per-call routing between Celery and PostgreSQL behind one OpenFeature flag.

``RoutingDispatcher`` (``dispatcher``) sends each call where the flag (``flags``) says; any
doubt means Celery.
"""

from pg_queue.routing.dispatcher import (
    DispatchHandle,
    DispatchResult,
    RoutingDispatcher,
    signature_to_continuation,
)

__all__ = ["DispatchHandle", "DispatchResult", "RoutingDispatcher", "signature_to_continuation"]
