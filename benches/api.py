"""make bench-api: vireod's control-plane latency, measured with boto3 (a real EC2 client).

1. RunInstances-to-running: LAUNCHES launches of the small instance guest on this host's KVM, one
   at a time; each is timed from the RunInstances call until DescribeInstances reports it running
   (polled every 5 ms). Beside it, in the same run: the same guest started directly by
   `vireo-vmm` until its control API answers, which is the floor vireod's figure stands on.
2. DescribeInstances with 1,000 and 10,000 instance records: the records are rows of vireod's own
   schema (stopped instances, two tags each) written into its database before it starts; each
   figure is the time of one full listing (every page of MaxResults=1000, as a paginating client
   does) and of a filtered one (tag:group), REPEAT times, p50 and p99.

Not a test: it asserts nothing about time and prints what it measured.
"""

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ec2"))
from conftest import GUEST, VMM, Vireod, image_id  # noqa: E402

LAUNCHES = int(os.environ.get("LAUNCHES", "50"))
REPEAT = int(os.environ.get("REPEAT", "20"))


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def ms(x):
    return f"{x * 1000:8.1f} ms"


def launch_latency():
    v = Vireod("--capacity-vcpus", "100000", "--capacity-memory-mib", "10000000")
    try:
        ec2 = v.client()
        ami = image_id(ec2, "vireo-testguest")
        times = []
        for _ in range(LAUNCHES):
            t0 = time.perf_counter()
            iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
            while ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] != "running":
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            ec2.stop_instances(InstanceIds=[iid], Force=True)
            ec2.terminate_instances(InstanceIds=[iid])
        return times
    finally:
        v.close()


def direct_vmm_latency():
    """vireo-vmm alone: process start until its API socket answers GET /vm."""
    import socket
    times = []
    tmp = tempfile.mkdtemp(prefix="bench-api-")
    sock = os.path.join(tmp, "vmm.sock")
    for _ in range(LAUNCHES):
        if os.path.exists(sock):
            os.unlink(sock)
        t0 = time.perf_counter()
        p = subprocess.Popen([VMM, "--kernel", os.path.join(GUEST, "testguest.elf"), "--memory", "512", "--vcpus", "2",
                              "--serial", "none", "--api-sock", sock, "--cmdline", "console=ttyS0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(b"GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    s.close()
                    break
                s.close()
            except OSError:
                time.sleep(0.001)
        times.append(time.perf_counter() - t0)
        p.kill()
        p.wait()
    os.rmdir(tmp) if not os.listdir(tmp) else None
    return times


def seed(data, n):
    db = sqlite3.connect(os.path.join(data, "state.db"))
    owner = db.execute("SELECT value FROM settings WHERE key='owner_id'").fetchone()[0]
    ami = db.execute("SELECT image_id FROM images LIMIT 1").fetchone()[0]
    rows, tags = [], []
    for k in range(n):
        iid = f"i-{k:017x}"
        rows.append((iid, f"r-{k // 10:017x}", owner, ami, "t3.nano", 2, 512, "stopped", "Client.UserInitiatedShutdown",
                     "Client.UserInitiatedShutdown: User initiated shutdown", "2026-11-21T12:00:00.000Z", k % 10, None,
                     b"", os.path.join(data, "instances", iid)))
        tags += [(iid, "Name", f"bench-{k}"), (iid, "group", f"g{k % 100}")]
    db.executemany("INSERT INTO instances(instance_id, reservation_id, owner_id, image_id, instance_type, vcpus, memory_mib,"
                   " state, reason_code, reason_message, launch_time, launch_index, client_token, user_data, dir)"
                   " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.executemany("INSERT INTO tags(resource_id, key, value) VALUES(?,?,?)", tags)
    db.commit()
    db.close()


def describe_latency(n):
    v = Vireod()
    try:
        v.kill()
        seed(v.data, n)
        v.start()
        ec2 = v.client()
        full, filtered = [], []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            count = 0
            for page in ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 1000}):
                count += sum(len(r["Instances"]) for r in page["Reservations"])
            full.append(time.perf_counter() - t0)
            assert count == n, count
            t0 = time.perf_counter()
            out = ec2.describe_instances(Filters=[{"Name": "tag:group", "Values": ["g7"]}])
            filtered.append(time.perf_counter() - t0)
            assert sum(len(r["Instances"]) for r in out["Reservations"]) == n // 100
        return full, filtered
    finally:
        v.close()


def main():
    print(f"bench-api: vireod with boto3; {LAUNCHES} launches, {REPEAT} repeats of each DescribeInstances")
    vireod_t = launch_latency()
    direct_t = direct_vmm_latency()
    print("\nRunInstances to running (small instance guest, t3.nano, this host's KVM)")
    print(f"  {'':28} {'p50':>11} {'p99':>11} {'mean':>11}")
    for name, t in [("vireod (RunInstances..running)", vireod_t), ("vireo-vmm alone (to its API)", direct_t)]:
        print(f"  {name:28} {ms(pct(t, 50))} {ms(pct(t, 99))} {ms(statistics.mean(t))}")
    print("\nDescribeInstances (boto3, every page of 1000; and one tag filter)")
    print(f"  {'records':>8} {'full p50':>11} {'full p99':>11} {'filter p50':>11} {'filter p99':>11}")
    for n in (1000, 10000):
        full, filt = describe_latency(n)
        print(f"  {n:>8} {ms(pct(full, 50))} {ms(pct(full, 99))} {ms(pct(filt, 50))} {ms(pct(filt, 99))}")


if __name__ == "__main__":
    main()
