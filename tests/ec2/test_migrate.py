"""`vireo migrate`: a running instance moves to a VMM process in another network namespace (a
migration host) and back, many times, keeping its id, state and console; failures leave it
running where it was."""

import json
import os
import subprocess

from conftest import VIREO, Vireod, console, image_id, instance, wait_state


def netns_of(pid):
    return os.readlink(f"/proc/{pid}/ns/net")


def test_migrate_between_hosts_many_times():
    v = Vireod("--migration-hosts", "1")
    try:
        ec2 = v.client()
        ami = image_id(ec2, "vireo-testguest")
        iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                                UserData="migrating")["Instances"][0]["InstanceId"]
        wait_state(ec2, iid, "running")
        env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=os.path.join(v.data, "credentials"),
                   AWS_CONFIG_FILE=os.path.join(v.data, "config"), VIREO_ENDPOINT=v.endpoint)

        def migrate(*extra):
            return subprocess.run([VIREO, "--json", "migrate", iid, *extra], capture_output=True, text=True, env=env, timeout=120)

        root_ns = netns_of(os.getpid())
        for hop in range(6):
            before = v.vmm_pids()
            out = migrate()
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            assert report["target_host"] == ("1" if hop % 2 == 0 else "0"), report
            after = v.vmm_pids()
            assert len(after) == 1 and after != before, (before, after)
            ns = netns_of(after[0])
            assert (ns != root_ns) == (hop % 2 == 0), "the VMM runs in the target host's namespace"
            inst = instance(ec2, iid)
            assert inst["State"]["Name"] == "running" and inst["InstanceId"] == iid
        # The guest never rebooted: one ready line, its user data shown once.
        out = console(ec2, iid)
        assert out.count("VIREO-TESTGUEST ready") == 1, out
        # A host that does not exist is refused, and the instance stays where it is.
        bad = subprocess.run([VIREO, "migrate", iid, "--to", "7"], capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 1 and "InvalidParameterValue" in bad.stderr, bad.stderr
        assert instance(ec2, iid)["State"]["Name"] == "running" and len(v.vmm_pids()) == 1
        # Still fully managed after moving: a stop ends the VMM wherever it runs.
        ec2.stop_instances(InstanceIds=[iid], Force=True)
        wait_state(ec2, iid, "stopped")
        bad = migrate()
        assert bad.returncode == 1 and "IncorrectInstanceState" in bad.stderr, bad.stderr
        ec2.start_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "running")
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")
    finally:
        v.close()


def test_migrate_without_hosts_is_refused(vireod, ec2):
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=os.path.join(vireod.data, "credentials"),
               AWS_CONFIG_FILE=os.path.join(vireod.data, "config"), VIREO_ENDPOINT=vireod.endpoint)
    out = subprocess.run([VIREO, "migrate", "i-0123456789abcdef0"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "UnsupportedOperation" in out.stderr, out.stderr
