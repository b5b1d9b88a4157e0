"""vireod's GET /metrics (every running VMM's metrics relabelled with the instance's ID and type,
plus vireod's own gauges) and `vireo top`, which reads it, against real VMMs."""

import json
import os
import re
import subprocess
import urllib.error
import urllib.request

from conftest import ROOT, Vireod, image_id, wait_console, wait_state

VIREO = os.environ.get("VIREO_BIN", os.path.join(os.path.dirname(os.environ.get("VIREOD_BIN", "")) or
                                                 os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release"),
                                                 "vireo"))
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(endpoint):
    # No credentials: Prometheus scrapers cannot sign requests.
    with urllib.request.urlopen(endpoint + "/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text):
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def test_metrics_and_top_show_each_instance(vireod, ec2):
    ami = image_id(ec2, "vireo-testguest")
    want = {}
    for itype in ("t3.micro", "t3.nano"):
        iid = ec2.run_instances(ImageId=ami, InstanceType=itype, MinCount=1,
                                MaxCount=1)["Instances"][0]["InstanceId"]
        want[iid] = itype
    for iid in want:
        wait_state(ec2, iid, "running")
        wait_console(ec2, iid, "VIREO-TESTGUEST ready")

    text = scrape(vireod.endpoint)
    got = samples(text)
    for iid, itype in want.items():
        exits = [l for n, l, _ in got if n == "vireo_vcpu_exits_total" and l.get("instance_id") == iid]
        assert exits, f"no vireo_vcpu_exits_total for {iid} in\n{text}"
        assert all(l["instance_type"] == itype and "vcpu" in l and "reason" in l for l in exits), exits
        mem = [v for n, l, v in got if n == "vireo_memory_bytes" and l.get("instance_id") == iid]
        assert mem == [{"t3.micro": 1024, "t3.nano": 512}[itype] * 2**20], mem
        up = [v for n, l, v in got if n == "vireod_vmm_up" and l.get("instance_id") == iid]
        assert up == [1.0], up
    # One HELP and TYPE per metric however many VMMs report it.
    assert text.count("# TYPE vireo_vcpu_exits_total ") == 1
    assert text.count("# HELP vireo_vcpu_exits_total ") == 1
    gauges = {(n, tuple(sorted(l.items()))): v for n, l, v in got if n.startswith("vireod_")}
    assert gauges[("vireod_instances", (("state", "running"),))] == 2
    assert gauges[("vireod_used_vcpus", ())] == 4  # t3.micro and t3.nano have 2 vCPUs each
    assert gauges[("vireod_used_memory_mib", ())] == 1536
    assert gauges[("vireod_capacity_vcpus", ())] > 0

    # Only GET: the endpoint changes nothing.
    req = urllib.request.Request(vireod.endpoint + "/metrics", data=b"", method="POST")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("POST /metrics succeeded")
    except urllib.error.HTTPError as e:
        assert e.code == 405

    out = subprocess.run([VIREO, "top", "--once", "--json", "--interval", "0.5",
                          "--endpoint", vireod.endpoint],
                         capture_output=True, text=True, timeout=60,
                         # top needs no credentials: none are given.
                         env={"PATH": os.environ.get("PATH", ""), "HOME": vireod.tmp})
    assert out.returncode == 0, out.stderr
    rows = {r["instance_id"]: r for r in json.loads(out.stdout)}
    for iid, itype in want.items():
        r = rows[iid]
        assert r["instance_type"] == itype and r["state"] == "running" and r["vmm_up"] is True, r
        assert r["memory_mib"] == {"t3.micro": 1024, "t3.nano": 512}[itype], r
        # Exits are exported, so there is a rate (an idle guest may have none in 0.5 s).
        assert r["exits_per_sec"] is not None and r["exits_per_sec"] >= 0, r

    table = subprocess.run([VIREO, "top", "--once", "--interval", "0.2", "--endpoint", vireod.endpoint],
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ.get("PATH", ""), "HOME": vireod.tmp})
    assert table.returncode == 0, table.stderr
    assert "\x1b[" not in table.stdout, "no screen clearing when stdout is not a terminal"
    assert table.stdout.startswith("INSTANCE"), table.stdout
    for iid in want:
        assert iid in table.stdout

    ec2.terminate_instances(InstanceIds=list(want))
    for iid in want:
        wait_state(ec2, iid, "terminated")
    got = samples(scrape(vireod.endpoint))
    assert not [l for n, l, _ in got if l.get("instance_id") in want], "terminated instances are not scraped"


def test_no_metrics_flag_turns_the_endpoint_off():
    v = Vireod("--no-metrics", images=())
    try:
        try:
            urllib.request.urlopen(v.endpoint + "/metrics", timeout=30)
            raise AssertionError("/metrics answered with --no-metrics")
        except urllib.error.HTTPError as e:
            # The request falls through to the EC2 API, which wants a signature.
            assert e.code in (400, 401, 403), e.code
            assert b"<Code>" in e.read()
    finally:
        v.close()


def test_top_explains_an_unreachable_vireod(vireod):
    out = subprocess.run([VIREO, "top", "--once", "--endpoint", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("vireo: cannot reach vireod's metrics at http://127.0.0.1:1/metrics"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
