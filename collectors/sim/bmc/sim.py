"""Launcher, worker processes and control port of the BMC simulator.

Usage (from the repository root)::

    python3 -m collectors.sim.bmc.sim start --state-dir D --count N [options]
    python3 -m collectors.sim.bmc.sim run   --state-dir D --count N [options]
    python3 -m collectors.sim.bmc.sim stop  --state-dir D
    python3 -m collectors.sim.bmc.sim status --state-dir D
    python3 -m collectors.sim.bmc.sim fault --state-dir D NAME freeze|authfail|normal
    python3 -m collectors.sim.bmc.sim power --state-dir D NAME on|off

``start`` spawns the worker processes (at most --per-process BMCs each, one
UDP socket per BMC on 127.0.0.1), waits until every BMC answers an RMCP
presence ping, writes D/bmcs.json and D/pids and returns. ``run`` does the
same in the foreground until SIGINT/SIGTERM. From Python use
:func:`start` / :func:`stop` / :func:`control`.

Each worker serves a small HTTP control API on 127.0.0.1 (its URL is in
bmcs.json, per BMC as ``control_url``):

    GET  {control_url}                      state of the BMC (JSON)
    POST {control_url}/fault?mode=freeze|authfail|normal
    POST {control_url}/power?state=on|off
    POST {control_url}/sensor?name=GPU2%20Temp&value=95
    POST {control_url}/watts?value=3000     DCMI watts while powered on (40 W steps)
    POST {worker_url}/bmc/*/readings        JSON {"bmcs": {NAME: {"watts": W, "sensors": {S: V}}}}
    GET  {worker_url}/bmcs                   state of all BMCs of the worker
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from . import model as M

HOST = '127.0.0.1'
REPO_ROOT = Path(__file__).resolve().parents[3]
FAULTS = ('normal', 'freeze', 'authfail')
_children = {}      # pid -> Popen, for start() called in-process


# ----------------------------------------------------------------------
# worker


def _bmc_state(bmc):
    cur = bmc.dcmi_reading()[0]
    return {'name': bmc.name, 'index': bmc.index, 'port': bmc.port,
            'fault': bmc.fault, 'power_state': 'on' if bmc.power_on else 'off',
            'dcmi_watts': cur, 'boot_params': {str(k): v.hex() for k, v in
                                               bmc.boot_params.items()}}


def _make_handler(bmcs):
    by_name = {b.name: b for b in bmcs}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self):
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.split('/') if p]
            query = dict(urllib.parse.parse_qsl(url.query))
            return parts, query

        def do_GET(self):
            parts, _ = self._route()
            if parts == ['bmcs']:
                return self._reply(200, [_bmc_state(b) for b in bmcs])
            if len(parts) == 2 and parts[0] == 'bmc' and parts[1] in by_name:
                return self._reply(200, _bmc_state(by_name[parts[1]]))
            self._reply(404, {'error': 'not found'})

        def do_POST(self):
            parts, query = self._route()
            length = int(self.headers.get('Content-Length') or 0)
            if length:
                body = self.rfile.read(length).decode().strip()
                if body.startswith('{'):
                    query.update(json.loads(body))
            if len(parts) != 3 or parts[0] != 'bmc':
                return self._reply(404, {'error': 'not found'})
            targets = bmcs if parts[1] == '*' else (
                [by_name[parts[1]]] if parts[1] in by_name else [])
            if not targets:
                return self._reply(404, {'error': 'no BMC %s' % parts[1]})
            try:
                for bmc in targets:
                    _apply(bmc, parts[2], query)
            except (KeyError, ValueError) as e:
                return self._reply(400, {'error': str(e)})
            self._reply(200, [_bmc_state(b) for b in targets]
                        if parts[1] == '*' else _bmc_state(targets[0]))

    return Handler


def _set_watts(bmc, value):
    value = int(value)
    if value % M.WATTS_STEP or not M.STANDBY_WATTS <= value <= M.MAX_WATTS:
        raise ValueError('watts: a multiple of %d in %d..%d' % (M.WATTS_STEP, M.STANDBY_WATTS, M.MAX_WATTS))
    bmc.watts = value


def _apply(bmc, action, query):
    if action == 'fault':
        mode = query.get('mode', '')
        if mode not in FAULTS:
            raise ValueError('mode must be one of %s' % (FAULTS,))
        bmc.fault = mode
        if mode == 'authfail':
            bmc.server.sessions.clear()
    elif action == 'power':
        state = query.get('state', '')
        if state not in ('on', 'off'):
            raise ValueError('state must be on or off')
        bmc.power_on = state == 'on'
    elif action == 'sensor':
        bmc.set_sensor_value(query['name'], float(query['value']))
    elif action == 'watts':
        _set_watts(bmc, query['value'])
    elif action == 'readings':
        # {"bmcs": {NAME: {"watts": W, "sensors": {SENSOR: VALUE}}}}: many BMCs of this
        # process in one request (names this process does not serve are ignored)
        mine = query.get('bmcs', {}).get(bmc.name)
        if mine is not None:
            for name, value in mine.get('sensors', {}).items():
                bmc.set_sensor_value(name, float(value))
            if 'watts' in mine:
                _set_watts(bmc, mine['watts'])
    else:
        raise ValueError('unknown action %s' % action)


def worker_main(config_path):
    from .protocol import BmcServer

    cfg = json.loads(Path(config_path).read_text())
    sel = selectors.DefaultSelector()
    bmcs = []
    for spec in cfg['bmcs']:
        bmc = M.BmcModel(spec['index'], name=spec['name'],
                         username=spec['username'], password=spec['password'],
                         seed=spec['seed'], critical=spec['critical'],
                         power_on=spec['power_on'],
                         cipher_suites=spec['cipher_suites'],
                         dcmi_privilege=spec.get('dcmi_privilege', 2))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, spec['port']))
        sock.setblocking(False)
        bmc.port = sock.getsockname()[1]
        bmc.server = BmcServer(bmc, sock)
        sel.register(sock, selectors.EVENT_READ, bmc.server)
        bmcs.append(bmc)

    httpd = http.server.ThreadingHTTPServer((HOST, cfg.get('control_port', 0)),
                                            _make_handler(bmcs))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def _exit(*_):
        raise SystemExit(0)     # interrupts select() at once

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)

    ready = {'pid': os.getpid(),
             'control_url': 'http://%s:%d' % (HOST, httpd.server_address[1]),
             'ports': {b.name: b.port for b in bmcs}}
    tmp = Path(cfg['ready_file'] + '.tmp')
    tmp.write_text(json.dumps(ready))
    tmp.rename(cfg['ready_file'])

    parent = cfg.get('parent_pid')
    while True:
        if parent and os.getppid() != parent:
            # not detached: the process that started us is gone (even by SIGKILL); so are we
            raise SystemExit(0)
        for key, _ in sel.select(timeout=5.0):
            sock, server = key.fileobj, key.data
            for _ in range(64):
                try:
                    data, addr = sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                try:
                    server.datagram(data, addr)
                except Exception as e:    # never let one packet kill a worker
                    print('bmcsim %s: %r' % (server.bmc.name, e),
                          file=sys.stderr, flush=True)


# ----------------------------------------------------------------------
# launcher


def _ping_all(targets, timeout):
    """RMCP presence-ping (host, port) pairs until all answer; returns the
    set of ports that never answered."""
    pending = {p for _, p in targets}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.settimeout(0.05)
    ping = struct.pack('>BBBBIBBBB', 6, 0, 0xFF, 6, 4542, 0x80, 0, 0, 0)
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            for port in sorted(pending):
                sock.sendto(ping, (HOST, port))
            end = time.monotonic() + 0.5
            while pending and time.monotonic() < end:
                try:
                    data, addr = sock.recvfrom(512)
                except socket.timeout:
                    continue
                except ConnectionRefusedError:
                    continue
                if len(data) >= 12 and data[3] == 6 and data[8] == 0x40:
                    pending.discard(addr[1])
    finally:
        sock.close()
    return pending


def _write_atomic(path, text):
    tmp = Path(str(path) + '.tmp')
    tmp.write_text(text)
    tmp.rename(path)


def start(state_dir, count, base_port=0, ports=None, names=None,
          username='admin', password='password', cipher_suites=(3, 17),
          seed=0, critical_every=10, off_every=0, per_process=250,
          name_prefix='bmc-', timeout=60.0, detach=True, dcmi_privilege=2):
    """Start ``count`` BMCs; returns the bmcs.json content.

    Ports: ``ports`` (a list), else ``base_port`` + i, else (0) ports chosen
    by the kernel. BMC i is critical (GPU2 Temp at 92 C) if
    ``critical_every`` and i % critical_every == critical_every - 1, and
    starts powered off if ``off_every`` and i % off_every == off_every - 1.
    ``dcmi_privilege`` is the session privilege DCMI commands need (2 user,
    3 operator, 4 administrator; OpenIPMI's ipmi_sim needs more than user).
    """
    t0 = time.monotonic()
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if ports is not None and len(ports) != count:
        raise ValueError('%d ports for %d BMCs' % (len(ports), count))
    for suite in cipher_suites:
        if suite not in (3, 17):
            raise ValueError('cipher suite %s not supported (3, 17)' % suite)
    specs = []
    for i in range(count):
        port = ports[i] if ports else (base_port + i if base_port else 0)
        specs.append({
            'index': i,
            'name': names[i] if names else '%s%04d' % (name_prefix, i),
            'port': port, 'username': username, 'password': password,
            'seed': seed, 'cipher_suites': list(cipher_suites), 'dcmi_privilege': dcmi_privilege,
            'critical': bool(critical_every) and
            i % critical_every == critical_every - 1,
            'power_on': not (off_every and i % off_every == off_every - 1),
        })
    nproc = max(1, -(-count // per_process))
    chunks = [specs[k::nproc] for k in range(nproc)]
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO_ROOT) + (
        os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    procs = []
    for k, chunk in enumerate(chunks):
        ready = state / ('worker-%d.ready' % k)
        if ready.exists():
            ready.unlink()
        cfg = state / ('worker-%d.json' % k)
        cfg.write_text(json.dumps({'bmcs': chunk, 'ready_file': str(ready),
                                   'parent_pid': None if detach else os.getpid()}))
        log = open(state / ('worker-%d.log' % k), 'ab')
        proc = subprocess.Popen(
            [sys.executable, '-m', 'collectors.sim.bmc.sim', 'worker', str(cfg)],
            cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=detach)
        log.close()
        _children[proc.pid] = proc
        procs.append((proc, ready, chunk))
    (state / 'pids').write_text(''.join('%d\n' % p.pid for p, _, _ in procs))

    infos = []
    deadline = time.monotonic() + timeout
    try:
        for proc, ready, _ in procs:
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError('bmcsim worker %d exited (%s); see %s'
                                       % (proc.pid, proc.returncode,
                                          str(ready).replace('.ready', '.log')))
                if time.monotonic() > deadline:
                    raise RuntimeError('bmcsim workers not ready in %ss' % timeout)
                time.sleep(0.02)
            infos.append(json.loads(ready.read_text()))
        targets = [(HOST, port) for info in infos
                   for port in info['ports'].values()]
        missing = _ping_all(targets, max(1.0, deadline - time.monotonic()))
        if missing:
            raise RuntimeError('%d BMCs do not answer the RMCP ping (ports %s)'
                               % (len(missing), sorted(missing)[:10]))
    except BaseException:
        stop(state)
        raise

    bmcs = []
    for (proc, _, chunk), info in zip(procs, infos):
        for spec in chunk:
            bmc = M.BmcModel(spec['index'], name=spec['name'],
                             username=username, password=password, seed=seed,
                             critical=spec['critical'],
                             power_on=spec['power_on'],
                             cipher_suites=cipher_suites)
            bmcs.append({
                'name': spec['name'], 'index': spec['index'], 'host': HOST,
                'port': info['ports'][spec['name']],
                'username': username, 'password': password,
                'cipher_suites': list(cipher_suites),
                'pid': info['pid'],
                'control_url': '%s/bmc/%s' % (info['control_url'],
                                              urllib.parse.quote(spec['name'])),
                'expected': bmc.expected(),
            })
    bmcs.sort(key=lambda b: b['index'])
    doc = {
        'version': 1,
        'count': count,
        'seed': seed,
        'started_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'start_seconds': round(time.monotonic() - t0, 3),
        'processes': [{'pid': i['pid'], 'control_url': i['control_url'],
                       'bmcs': len(i['ports'])} for i in infos],
        'bmcs': bmcs,
    }
    _write_atomic(state / 'bmcs.json',
                  json.dumps(doc, indent=1 if count <= 50 else None))
    return doc


def status(state_dir, timeout=3.0):
    """(workers alive, workers listed, BMCs answering the ping, BMCs)."""
    state = Path(state_dir)
    pids = ([int(x) for x in (state / 'pids').read_text().split()]
            if (state / 'pids').exists() else [])
    alive = [p for p in pids if _is_ours(p) and _alive(p)]
    doc = json.loads((state / 'bmcs.json').read_text()) \
        if (state / 'bmcs.json').exists() else {'bmcs': []}
    targets = [(b['host'], b['port']) for b in doc['bmcs']]
    missing = _ping_all(targets, timeout) if alive and targets else \
        {p for _, p in targets}
    return len(alive), len(pids), len(targets) - len(missing), len(targets)


def _is_ours(pid):
    try:
        cmd = Path('/proc/%d/cmdline' % pid).read_bytes()
    except OSError:
        return False
    return b'collectors.sim.bmc.sim' in cmd


def _alive(pid):
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        stat = Path('/proc/%d/stat' % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def stop(state_dir, timeout=5.0):
    """Stop the workers listed in STATE_DIR/pids; returns how many."""
    pids_file = Path(state_dir) / 'pids'
    if not pids_file.exists():
        return 0
    pids = [int(x) for x in pids_file.read_text().split()]
    pids = [p for p in pids if _is_ours(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc = _children.pop(pid, None)
        if proc is not None:
            proc.wait()
    pids_file.unlink()
    return len(pids)


def _post_json(url, doc):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method='POST',
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=10) as rsp:
        return json.loads(rsp.read())


def set_readings(state_dir, readings):
    """Set watts and sensor values of many BMCs, one request per worker process:
    ``readings`` maps BMC name -> {"watts": W, "sensors": {SENSOR: VALUE}}."""
    doc = json.loads((Path(state_dir) / 'bmcs.json').read_text())
    for process in doc['processes']:
        _post_json('%s/bmc/*/readings' % process['control_url'], {'bmcs': readings})


def states(state_dir):
    """Every BMC's state (name, power_state, dcmi_watts, fault, ...), one request per worker."""
    doc = json.loads((Path(state_dir) / 'bmcs.json').read_text())
    out = []
    for process in doc['processes']:
        with urllib.request.urlopen('%s/bmcs' % process['control_url'], timeout=10) as rsp:
            out.extend(json.loads(rsp.read()))
    return out


def control(state_dir, name, action, /, **params):
    """POST a control action (fault, power, sensor, watts) to BMC ``name``
    (or '*' for all BMCs); returns the new state."""
    doc = json.loads((Path(state_dir) / 'bmcs.json').read_text())
    if name == '*':
        urls = ['%s/bmc/*' % p['control_url'] for p in doc['processes']]
    else:
        urls = [b['control_url'] for b in doc['bmcs'] if b['name'] == name]
        if not urls:
            raise KeyError('no BMC named %s' % name)
    result = []
    for url in urls:
        req = urllib.request.Request(
            '%s/%s?%s' % (url, action, urllib.parse.urlencode(params)),
            data=b'', method='POST')
        with urllib.request.urlopen(req, timeout=10) as rsp:
            result.append(json.loads(rsp.read()))
    return result[0] if name != '*' else [x for r in result for x in r]


# ----------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(prog='python3 -m collectors.sim.bmc.sim')
    sub = ap.add_subparsers(dest='cmd', required=True)
    for name in ('start', 'run'):
        p = sub.add_parser(name)
        p.add_argument('--state-dir', required=True)
        p.add_argument('--count', type=int, required=True)
        p.add_argument('--base-port', type=int, default=0,
                       help='consecutive ports from here (default: kernel-chosen)')
        p.add_argument('--ports', help='comma-separated list of ports')
        p.add_argument('--names', help='comma-separated list of BMC names')
        p.add_argument('--name-prefix', default='bmc-')
        p.add_argument('--username', default='admin')
        p.add_argument('--password', default='password')
        p.add_argument('--cipher-suites', default='3,17')
        p.add_argument('--seed', type=int, default=0)
        p.add_argument('--critical-every', type=int, default=10)
        p.add_argument('--dcmi-privilege', type=int, default=2, choices=(2, 3, 4),
                       help='session privilege DCMI needs: 2 user, 3 operator, 4 administrator')
        p.add_argument('--off-every', type=int, default=0)
        p.add_argument('--per-process', type=int, default=250)
        p.add_argument('--timeout', type=float, default=60.0)
    for name in ('stop', 'status'):
        p = sub.add_parser(name)
        p.add_argument('--state-dir', required=True)
    for name, choices in (('fault', FAULTS), ('power', ('on', 'off'))):
        p = sub.add_parser(name)
        p.add_argument('--state-dir', required=True)
        p.add_argument('name', help="BMC name, or '*' for all")
        p.add_argument('value', choices=choices)
    p = sub.add_parser('worker')
    p.add_argument('config')
    args = ap.parse_args(argv)

    if args.cmd == 'worker':
        return worker_main(args.config)
    if args.cmd in ('start', 'run'):
        doc = start(
            args.state_dir, args.count, base_port=args.base_port,
            ports=[int(x) for x in args.ports.split(',')] if args.ports else None,
            names=args.names.split(',') if args.names else None,
            username=args.username, password=args.password,
            cipher_suites=[int(x) for x in args.cipher_suites.split(',')],
            seed=args.seed, critical_every=args.critical_every, dcmi_privilege=args.dcmi_privilege,
            off_every=args.off_every, per_process=args.per_process,
            name_prefix=args.name_prefix, timeout=args.timeout,
            detach=args.cmd == 'start')
        ports = sorted(b['port'] for b in doc['bmcs'])
        print('bmcsim: %d BMCs ready on %s ports %d-%d in %d processes '
              '(%.2f s); %s' % (doc['count'], HOST, ports[0], ports[-1],
                                len(doc['processes']), doc['start_seconds'],
                                Path(args.state_dir) / 'bmcs.json'), flush=True)
        if args.cmd == 'run':
            done = []
            signal.signal(signal.SIGTERM, lambda *a: done.append(1))
            try:
                while not done and all(_alive(p['pid'])
                                       for p in doc['processes']):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            stop(args.state_dir)
        return 0
    if args.cmd == 'stop':
        n = stop(args.state_dir)
        print('bmcsim: stopped %d worker processes' % n)
        return 0
    if args.cmd == 'status':
        alive, npids, up, total = status(args.state_dir)
        print('bmcsim: %d/%d workers alive, %d/%d BMCs answer'
              % (alive, npids, up, total))
        return 0 if npids and alive == npids and up == total else 1
    if args.cmd == 'fault':
        r = control(args.state_dir, args.name, 'fault', mode=args.value)
    else:
        r = control(args.state_dir, args.name, 'power', state=args.value)
    print(json.dumps(r))
    return 0


if __name__ == '__main__':
    sys.exit(main())
