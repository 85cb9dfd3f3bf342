#!/usr/bin/env python3
"""Hostile-client figures against a running kmflow (see benches/hostile.sh).

  hostile.py --api http://127.0.0.1:PORT --corp ID [--connections N] [--clients 64] [--seconds 20]

Prints, one per line:
  idle: how many idle TCP connections the API held before it refused (closed) new ones, and
        whether /healthz still answered while they were held;
  slowloris: how many of 200 connections sending one header line per second were still open
        after the header timeout (should be 0);
  roster: /healthz latency p50/p99 while CLIENTS threads read pages of the corporation's roster
        (all sort orders, so the cache is exercised) as fast as they can, and the roster rate.
"""
import argparse, http.client, resource, socket, subprocess, sys, threading, time, urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("--api", required=True)
ap.add_argument("--corp", required=True)
ap.add_argument("--connections", type=int, default=6000)
ap.add_argument("--probe", action="store_true", help="only probe /healthz for --seconds (internal)")
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--seconds", type=float, default=20)
a = ap.parse_args()
u = urllib.parse.urlparse(a.api)
HOST, PORT = u.hostname, u.port


def get(path, timeout=10):
    c = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    t0 = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, time.perf_counter() - t0


def refused_total():
    """kmflow_http_connections_refused_total from /metrics."""
    c = http.client.HTTPConnection(HOST, PORT, timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    return sum(float(l.split()[-1]) for l in body.splitlines()
               if l.startswith("kmflow_http_connections_refused_total"))


def idle_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    refused_before = refused_total()
    socks, failed = [], 0
    t0 = time.time()
    for _ in range(a.connections):
        try:
            s = socket.create_connection((HOST, PORT), timeout=2)
            socks.append(s)
        except OSError:
            failed += 1
            break
    opening = time.time() - t0
    time.sleep(1.0)
    # Still open now (a silent connection is also closed at the header timeout, counted from
    # its accept, so on a slow opening loop this undercounts what was held).
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(1)
            if data == b"":
                continue  # closed by the server
            alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    try:
        status, dt = get("/healthz")
        health = f"a new /healthz got {status} in {dt*1000:.1f} ms"
    except OSError as e:
        health = f"a new connection was refused as designed ({e.__class__.__name__})"
    for s in socks:
        s.close()
    time.sleep(0.5)
    status, dt = get("/healthz")
    # What the API held: every connection it did not refuse on accept (its own count).
    refused = int(refused_total() - refused_before)
    print(f"idle: opened {len(socks)} connections in {opening:.1f} s; the API held "
          f"{len(socks) - refused} and refused {refused} on accept ({alive} still open 1 s "
          f"later); while held, {health}; after closing them /healthz {status} in "
          f"{dt*1000:.1f} ms")


def slowloris():
    socks = []
    for _ in range(200):
        s = socket.create_connection((HOST, PORT), timeout=2)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    deadline = time.time() + 8
    while time.time() < deadline:
        for s in socks:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
        time.sleep(1)
    alive = 0
    for s in socks:
        try:
            s.sendall(b"X-Slow: 1\r\n")
            s.setblocking(False)
            if s.recv(1) == b"":
                continue
            alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.close()
    print(f"slowloris: {alive} of 200 one-header-per-second connections still open after 8 s")


def roster_load():
    """64 connections reading roster pages (every sort, so the cache holds many orderings) with
    wrk, a load generator light enough to leave the API the CPU; /healthz probed meanwhile
    from another process."""
    import os, re, shutil, tempfile
    sorts = ["kills", "losses", "isk_destroyed", "damage_done", "involved", "character_id"]
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write("local sorts = {" + ",".join(f'"{x}"' for x in sorts) + "}\n"
              "local n = 0\n"
              "request = function() n = n + 1\n"
              f"  return wrk.format('GET', '/v1/corporations/{a.corp}/members?limit=100&sort=' .. sorts[n % #sorts + 1])\n"
              "end\n")
    lua.close()
    if not shutil.which("wrk"):
        sys.exit("hostile.py: wrk is needed (scripts/provision.sh --bench)")
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{a.clients}", f"-d{int(a.seconds)}s", "-s", lua.name, a.api],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    probe = subprocess.run(
        [sys.executable, __file__, "--api", a.api, "--corp", a.corp, "--probe",
         "--seconds", str(a.seconds - 3)],
        capture_output=True, text=True)
    out = wrk.communicate()[0]
    os.unlink(lua.name)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print(f"roster: {a.clients} connections (wrk) reading corporation {a.corp}'s roster at "
          f"{float(rate.group(1)) if rate else 0:,.0f} pages/s"
          f"{', ' + errors.group(1) + ' non-2xx' if errors else ''}; {probe.stdout.strip()}")


def probe_healthz():
    lat = []
    stop = time.time() + a.seconds
    c = http.client.HTTPConnection(HOST, PORT, timeout=10)
    while time.time() < stop:
        t0 = time.perf_counter()
        c.request("GET", "/healthz")
        c.getresponse().read()
        lat.append(time.perf_counter() - t0)
        time.sleep(0.01)
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(f"/healthz p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {lat[-1]*1000:.2f} ms "
          f"({len(lat)} probes)")


if a.probe:
    probe_healthz()
else:
    idle_connections()
    slowloris()
    roster_load()
