"""Reference python-ipmi client for the simulator: checks and benchmark.

    python3 -m collectors.sim.bmc.poll STATE_DIR check   [--name bmc-0000]
    python3 -m collectors.sim.bmc.poll STATE_DIR bench   [--threads 64] [--sdr]
    python3 -m collectors.sim.bmc.poll STATE_DIR faults  [--name bmc-0001]

``check`` reads everything from one BMC with python-ipmi and compares it
with the expected values in bmcs.json. ``bench`` polls every BMC once
(session open, chassis status, DCMI power reading, the 10 sensors by
number, close) over a thread pool. ``faults`` checks freeze / authfail /
normal through the control port.

Needs ``pip install 'python-ipmi[rmcpplus]'``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import resource
import sys
import time
from pathlib import Path

import pyipmi
import pyipmi.interfaces
from pyipmi.errors import AuthenticationError, IpmiConnectionError

from .sim import control


def connect(bmc, cipher_suite=3, timeout=2.0):
    """Open an RMCP+ session to one bmcs.json entry; returns pyipmi.Ipmi."""
    intf = pyipmi.interfaces.create_interface(
        'rmcpplus', keep_alive_interval=0, cipher_suite=cipher_suite)
    ipmi = pyipmi.create_connection(intf)
    ipmi.session.set_session_type_rmcp(bmc['host'], bmc['port'])
    ipmi.session.set_auth_type_user(bmc['username'], bmc['password'])
    ipmi.target = pyipmi.Target(ipmb_address=0x20)
    intf.open()
    intf.set_timeout(timeout)      # default 2 s; open() resets it
    ipmi.session.establish()
    return ipmi


def sensor_value(ipmi, record):
    raw, states = ipmi.get_sensor_reading(record.number)
    value = record.convert_sensor_raw_to_value(raw)
    # byte 4 of Get Sensor Reading is 0x80 (reserved, "returned as 1b"):
    # only bits 0-5 are the threshold comparison status
    return value, (states or 0) & 0x3F


def read_all(ipmi):
    """Every reading the simulator serves, as plain Python values."""
    out = {}
    dev = ipmi.get_device_id()
    out['device_id'] = {'device_id': dev.device_id,
                        'firmware': str(dev.fw_revision),
                        'ipmi_version': str(dev.ipmi_version),
                        'manufacturer_id': dev.manufacturer_id,
                        'product_id': dev.product_id}
    out['power_on'] = ipmi.get_chassis_status().power_on
    pr = ipmi.get_power_reading(1)
    out['dcmi'] = {'current_watts': pr.current_power,
                   'min_watts': pr.minimum_power,
                   'max_watts': pr.maximum_power,
                   'avg_watts': pr.average_power,
                   'sampling_period_ms': pr.period,
                   'active': bool(pr.reading_state & 0x40)}
    out['sensors'] = {}
    for rec in ipmi.get_repository_sdr_list():
        if rec.type != pyipmi.sdr.SDR_TYPE_FULL_SENSOR_RECORD:
            continue
        value, bits = sensor_value(ipmi, rec)
        out['sensors'][rec.device_id_string.decode()
                       if isinstance(rec.device_id_string, bytes)
                       else rec.device_id_string] = {
            'number': rec.number, 'value': value, 'bits': bits,
            'unit': rec.units_2}
    fru = ipmi.get_fru_inventory()
    out['fru'] = {
        'board_manufacturer': str(fru.board_info_area.manufacturer),
        'board_product': str(fru.board_info_area.product_name),
        'board_serial': str(fru.board_info_area.serial_number),
        'product_manufacturer': str(fru.product_info_area.manufacturer),
        'product_name': str(fru.product_info_area.name),
        'product_serial': str(fru.product_info_area.serial_number),
        'asset_tag': str(fru.product_info_area.asset_tag),
    }
    return out


def check(doc, name, cipher_suite=3):
    bmc = next(b for b in doc['bmcs'] if b['name'] == name)
    exp = bmc['expected']
    ipmi = connect(bmc, cipher_suite)
    try:
        got = read_all(ipmi)
    finally:
        ipmi.session.close()
        ipmi.interface.close()
    errors = []
    if got['power_on'] != (exp['power_state'] == 'on'):
        errors.append('power %s' % got['power_on'])
    for k, v in exp['dcmi'].items():
        if got['dcmi'][k] != v:
            errors.append('dcmi %s %s != %s' % (k, got['dcmi'][k], v))
    for s in exp['sensors']:
        g = got['sensors'].get(s['name'])
        if g is None or round(g['value'], 2) != s['value'] \
                or g['bits'] != s['threshold_bits']:
            errors.append('sensor %s %s != %s' % (s['name'], g, s['value']))
    for k, v in got['fru'].items():
        if exp['fru'][k] != v:
            errors.append('fru %s %r != %r' % (k, v, exp['fru'][k]))
    if got['device_id']['firmware'] != exp['device_id']['firmware']:
        errors.append('firmware %s' % got['device_id']['firmware'])
    return got, errors


def poll_one(bmc, sensors, cipher_suite=3, with_sdr=False):
    """One collector poll: session, power, DCMI, sensors, close."""
    ipmi = connect(bmc, cipher_suite)
    try:
        power = ipmi.get_chassis_status().power_on
        watts = ipmi.get_power_reading(1).current_power
        if with_sdr:
            sensors = [r for r in ipmi.get_repository_sdr_list()
                       if r.type == pyipmi.sdr.SDR_TYPE_FULL_SENSOR_RECORD]
        values = {r.number: sensor_value(ipmi, r)[0] for r in sensors}
    finally:
        ipmi.session.close()
        ipmi.interface.close()
    return power, watts, values


def bench(doc, threads=64, with_sdr=False, cipher_suite=3):
    bmcs = doc['bmcs']
    # sensor records are read once (like a collector caching the SDRs)
    ipmi = connect(bmcs[0], cipher_suite)
    records = [r for r in ipmi.get_repository_sdr_list()
               if r.type == pyipmi.sdr.SDR_TYPE_FULL_SENSOR_RECORD]
    ipmi.session.close()
    ipmi.interface.close()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    errors = 0
    wrong = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futs = {pool.submit(poll_one, b, records, cipher_suite, with_sdr): b
                for b in bmcs}
        for fut in concurrent.futures.as_completed(futs):
            b = futs[fut]
            try:
                power, watts, _ = fut.result()
            except Exception as e:        # noqa: BLE001
                errors += 1
                if errors <= 3:
                    print('%s: %r' % (b['name'], e), file=sys.stderr)
                continue
            if watts != b['expected']['dcmi']['current_watts']:
                wrong += 1
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {'bmcs': len(bmcs), 'threads': threads, 'with_sdr': with_sdr,
            'wall_s': round(wall, 2), 'client_cpu_s': round(cpu, 2),
            'errors': errors, 'wrong_values': wrong}


def faults(doc, state_dir, name):
    bmc = next(b for b in doc['bmcs'] if b['name'] == name)
    results = {}
    control(state_dir, name, 'fault', mode='freeze')
    t0 = time.monotonic()
    try:
        connect(bmc, timeout=1.0)
        results['freeze'] = 'connected?!'
    except IpmiConnectionError as e:
        results['freeze'] = 'IpmiConnectionError after %.1fs: %s' % (
            time.monotonic() - t0, e)
    control(state_dir, name, 'fault', mode='authfail')
    try:
        connect(bmc)
        results['authfail'] = 'connected?!'
    except AuthenticationError as e:
        results['authfail'] = 'AuthenticationError: %s' % e
    control(state_dir, name, 'fault', mode='normal')
    ipmi = connect(bmc)
    results['normal'] = 'power_on=%s' % ipmi.get_chassis_status().power_on
    ipmi.session.close()
    ipmi.interface.close()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(prog='python3 -m collectors.sim.bmc.poll')
    ap.add_argument('state_dir')
    ap.add_argument('what', choices=('check', 'bench', 'faults'))
    ap.add_argument('--name')
    ap.add_argument('--threads', type=int, default=64)
    ap.add_argument('--sdr', action='store_true',
                    help='bench: also read the SDR repository every poll')
    ap.add_argument('--cipher-suite', type=int, default=3)
    args = ap.parse_args(argv)
    doc = json.loads((Path(args.state_dir) / 'bmcs.json').read_text())
    if args.what == 'check':
        names = [args.name] if args.name else [b['name'] for b in doc['bmcs']]
        bad = 0
        for name in names:
            got, errors = check(doc, name, args.cipher_suite)
            if errors:
                bad += 1
                print(name, 'MISMATCH', errors)
        if len(names) == 1:
            print(json.dumps(got, indent=1))
        print('checked %d BMCs, %d mismatched' % (len(names), bad))
        return 1 if bad else 0
    if args.what == 'bench':
        print(json.dumps(bench(doc, args.threads, args.sdr, args.cipher_suite)))
        return 0
    name = args.name or doc['bmcs'][min(1, len(doc['bmcs']) - 1)]['name']
    print(json.dumps(faults(doc, args.state_dir, name), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
