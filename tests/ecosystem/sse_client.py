#!/usr/bin/env python3
"""A subscriber of kmflow's live feed, with a real SSE client (sseclient-py over requests).

    sse_client.py <stream-url> --killmails N [--reconnect-after K] [--timeout S] [--until-stats]

Prints one JSON object per event received ({"event", "id", "data", "at"}: `at` is the Unix time
it arrived, in seconds) and exits 0 once N `killmail` events arrived, 1 at the timeout. With
--reconnect-after K it closes the connection after the K-th killmail event and reconnects with
`Last-Event-ID` set to the last id received, printing {"event": "reconnected", "id": ...}:
nothing may be missed or repeated across it.
"""

import argparse
import json
import os
import sys
import threading
import time

import requests
import sseclient


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--killmails", type=int, required=True)
    p.add_argument("--reconnect-after", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--until-stats", action="store_true",
                   help="after the N-th killmail, also wait for the next stats event")
    args = p.parse_args()

    deadline = time.time() + args.timeout
    state = {"killmails": 0}

    def give_up():
        print(f"timed out with {state['killmails']} of {args.killmails} killmails", file=sys.stderr, flush=True)
        os._exit(1)

    # The stream may be quiet (keep-alives only) for any time: the deadline is a timer.
    threading.Timer(args.timeout, give_up).start()
    killmails = 0
    last_id = None
    reconnected = args.reconnect_after <= 0
    while time.time() < deadline:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        resp = requests.get(args.url, headers=headers, stream=True, timeout=(5, 15))
        if resp.status_code != 200:
            print(f"stream answered {resp.status_code}: {resp.text}", file=sys.stderr)
            return 1
        client = sseclient.SSEClient(resp)
        try:
            for ev in client.events():
                if ev.id:
                    last_id = ev.id
                try:
                    data = json.loads(ev.data)
                except ValueError:
                    data = ev.data
                print(json.dumps({"event": ev.event, "id": ev.id, "data": data, "at": time.time()}), flush=True)
                if ev.event == "dropped":
                    return 1
                if ev.event == "stats" and killmails >= args.killmails:
                    sys.stdout.flush()
                    os._exit(0)
                if ev.event == "killmail":
                    killmails += 1
                    state["killmails"] = killmails
                    if killmails >= args.killmails and not args.until_stats:
                        sys.stdout.flush()
                        os._exit(0)
                    if not reconnected and killmails >= args.reconnect_after:
                        break
                if time.time() > deadline:
                    break
        except requests.exceptions.RequestException as e:
            # A read timeout between events is not an error: keep-alives arrive every 10 s.
            print(f"connection ended: {e}", file=sys.stderr)
        finally:
            resp.close()
        if not reconnected:
            reconnected = True
            print(json.dumps({"event": "reconnected", "id": last_id, "at": time.time()}), flush=True)
    print(f"timed out with {killmails} of {args.killmails} killmails", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
