"""Schemathesis hooks for kmflow's contract test (tests/ecosystem.rs).

GET /v1/stream follows the live feed until the client leaves, which a request/response fuzzer
cannot do: every generated request to it is sent with `follow=false`, a catch-up read that
sends what is kept after the position and ends. Every other parameter and header of the route
(filters, min_isk, Last-Event-ID, last_event_id) is still generated and mutated.
"""

import schemathesis


@schemathesis.hook
def map_query(context, query):
    if context.operation is not None and context.operation.path == "/v1/stream":
        query = dict(query or {})
        query["follow"] = "false"
    return query
