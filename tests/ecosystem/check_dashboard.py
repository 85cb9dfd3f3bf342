#!/usr/bin/env python3
"""Checks every query of a Grafana dashboard against a running Prometheus.

    check_dashboard.py <dashboard.json> <prometheus-url> [--allow-empty METRIC]...

Each panel target's `expr` (rows' nested panels included) is sent to
<prometheus-url>/api/v1/query as an instant query. An expression fails when Prometheus does not
answer `success` (a parse or evaluation error) or answers an empty result. Grafana macros
($__rate_interval, $__interval, $__range, ...) are replaced by fixed durations first; any other
`$variable` left in an expression is a failure (raw Prometheus would not understand it).

`--allow-empty METRIC` (repeatable) tolerates an empty result for expressions that mention
METRIC (e.g. kmflow_source_consumer_lag_messages without a Kafka source); they are listed as
warnings. Exit status: 0 when every expression passed, 1 when any failed, 2 on a usage, file or
connection error. Standard library only.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

# Grafana's built-in interval macros, as raw PromQL durations.
MACROS = [
    ("$__rate_interval", "1m"),
    ("${__rate_interval}", "1m"),
    ("$__interval_ms", "15000"),
    ("${__interval_ms}", "15000"),
    ("$__interval", "15s"),
    ("${__interval}", "15s"),
    ("$__range_s", "3600"),
    ("${__range_s}", "3600"),
    ("$__range_ms", "3600000"),
    ("${__range_ms}", "3600000"),
    ("$__range", "1h"),
    ("${__range}", "1h"),
]
VARIABLE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_:.]*\}|[A-Za-z_][A-Za-z0-9_]*)|\[\[[A-Za-z_][A-Za-z0-9_]*\]\]")


def exprs(panels, path=()):
    """Yields (panel title path, refId, expr) for every target of `panels`, rows included."""
    for panel in panels or []:
        title = path + (str(panel.get("title") or "panel %s" % panel.get("id")),)
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip() and not target.get("hide"):
                yield " / ".join(title), target.get("refId", "?"), expr
        yield from exprs(panel.get("panels"), title)


def substitute(expr):
    for macro, value in MACROS:
        expr = expr.replace(macro, value)
    return expr


def query(base, expr, timeout):
    url = base.rstrip("/") + "/api/v1/query"
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:  # 400/422: a parse or evaluation error, in JSON
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": "HTTP %d: %s" % (e.code, body[:200])}


def main(argv):
    args, allow = [], []
    it = iter(argv[1:])
    for a in it:
        if a == "--allow-empty":
            allow.append(next(it, ""))
        elif a.startswith("--allow-empty="):
            allow.append(a.split("=", 1)[1])
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            args.append(a)
    if len(args) != 2 or "" in allow:
        print("usage: check_dashboard.py <dashboard.json> <prometheus-url> [--allow-empty METRIC]...",
              file=sys.stderr)
        return 2
    path, base = args
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 2
    # A dashboard exported "for sharing" or wrapped for the HTTP API: {"dashboard": {...}}.
    if "panels" not in dashboard and isinstance(dashboard.get("dashboard"), dict):
        dashboard = dashboard["dashboard"]
    targets = list(exprs(dashboard.get("panels")))
    if not targets:
        print("%s: no panel expressions found" % path, file=sys.stderr)
        return 1

    failures, warnings, passed = [], [], 0
    for title, ref, raw in targets:
        expr = substitute(raw)
        where = "%s [%s]: %s" % (title, ref, raw)
        left = VARIABLE.search(expr)
        if left:
            failures.append("%s\n    template variable %s is not PromQL" % (where, left.group(0)))
            continue
        try:
            answer = query(base, expr, timeout=30)
        except (urllib.error.URLError, OSError, ValueError) as e:
            print("cannot query %s: %s" % (base, e), file=sys.stderr)
            return 2
        if answer.get("status") != "success":
            failures.append("%s\n    %s: %s" % (where, answer.get("errorType", "error"), answer.get("error")))
            continue
        data = answer.get("data") or {}
        result = data.get("result")
        empty = result is None or (data.get("resultType") in ("vector", "matrix") and len(result) == 0)
        if empty:
            if any(m in expr for m in allow):
                warnings.append("%s\n    no data (allowed)" % where)
            else:
                failures.append("%s\n    no data" % where)
            continue
        passed += 1

    for w in warnings:
        print("WARN " + w)
    for f in failures:
        print("FAIL " + f)
    print("%d expressions: %d passed, %d allowed empty, %d failed"
          % (len(targets), passed, len(warnings), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
