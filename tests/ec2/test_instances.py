"""boto3 drives vireod: instance types, images, instances and their lifecycle, tags, pages."""

import base64
import json
import os
import shutil
import subprocess
import threading

import botocore.exceptions
import pytest

from conftest import console, image_id, instance, wait_console, wait_state


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_instance_types_match_ec2(ec2):
    types = {t["InstanceType"]: t for t in ec2.describe_instance_types()["InstanceTypes"]}
    assert {"t3.nano", "t3.2xlarge", "c5.4xlarge", "m5.large", "r5.4xlarge"} <= set(types)
    assert types["t3.micro"]["VCpuInfo"]["DefaultVCpus"] == 2
    assert types["t3.micro"]["MemoryInfo"]["SizeInMiB"] == 1024
    assert types["r5.large"]["MemoryInfo"]["SizeInMiB"] == 16384
    assert types["c5.4xlarge"]["VCpuInfo"]["DefaultVCpus"] == 16
    one = ec2.describe_instance_types(InstanceTypes=["m5.xlarge"])["InstanceTypes"]
    assert [t["InstanceType"] for t in one] == ["m5.xlarge"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instance_types(InstanceTypes=["t3.enormous"])
    assert error_code(e) == "InvalidParameterValue"


def test_images_registered_at_setup_and_register_deregister(ec2, vireod):
    ami = image_id(ec2, "vireo-testguest")
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["State"] == "available" and img["Architecture"] == "x86_64"
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["vireo-*"]}])["Images"]
    assert ec2.describe_images(Filters=[{"Name": "name", "Values": ["nope-*"]}])["Images"] == []

    # RegisterImage reads files only from the import directory (DATA/import by default).
    imports = os.path.join(vireod.data, "import")
    guest = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "build", "guest")
    shutil.copy(os.path.join(guest, "testguest.elf"), imports)
    manifest = os.path.join(imports, "extra.json")
    with open(manifest, "w") as f:
        f.write('{"kernel": "testguest.elf", "cmdline": "console=ttyS0"}')
    new = ec2.register_image(Name="extra-image", ImageLocation=manifest,
                             TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "team", "Value": "qa"}]}])["ImageId"]
    got = ec2.describe_images(Filters=[{"Name": "tag:team", "Values": ["qa"]}])["Images"]
    assert [i["ImageId"] for i in got] == [new]
    ec2.deregister_image(ImageId=new)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_images(ImageIds=[new])
    assert error_code(e) == "InvalidAMIID.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.register_image(Name="bad-image", ImageLocation="/nonexistent/manifest.json")
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_images(ImageIds=["ami-nothex"])
    assert error_code(e) == "InvalidAMIID.Malformed"


def test_run_user_data_console_stop_start_modify_terminate(ec2):
    ami = image_id(ec2, "vireo-testguest")
    r = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                          UserData="hello from boto3",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "life"}]}])
    iid = r["Instances"][0]["InstanceId"]
    assert r["Instances"][0]["State"]["Name"] == "pending"
    wait_state(ec2, iid, "running")
    out = wait_console(ec2, iid, "user-data: hello from boto3")
    assert f"vireo.instance_id={iid}" in out
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == b"hello from boto3"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t3.micro"})
    assert error_code(e) == "IncorrectInstanceState"

    ch = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert ch["PreviousState"]["Name"] == "running" and ch["CurrentState"]["Name"] == "stopping"
    # The small guest ignores the shutdown request: after the grace period the VMM is killed.
    wait_state(ec2, iid, "stopped")
    assert instance(ec2, iid)["StateReason"]["Code"] == "Client.UserInitiatedShutdown"

    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t3.micro"})
    ch = ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
    assert ch["PreviousState"]["Name"] == "stopped" and ch["CurrentState"]["Name"] == "pending"
    wait_state(ec2, iid, "running")
    assert instance(ec2, iid)["InstanceType"] == "t3.micro"
    assert console(ec2, iid).count("VIREO-TESTGUEST ready") == 2, "a second boot on the same console"

    ec2.reboot_instances(InstanceIds=[iid])
    wait_console(ec2, iid, "VIREO-TESTGUEST idle\n" * 1 + "VIREO-TESTGUEST ready")
    wait_state(ec2, iid, "running")

    ch = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert ch["CurrentState"]["Name"] in ("shutting-down", "terminated")
    wait_state(ec2, iid, "terminated")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.start_instances(InstanceIds=[iid])
    assert error_code(e) == "IncorrectInstanceState"


def test_guest_that_powers_off_becomes_stopped(ec2):
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                            UserData="poweroff")["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "stopped")
    inst = instance(ec2, iid)
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    assert "VIREO-TESTGUEST powering off" in console(ec2, iid)
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_describe_filters_and_pages(ec2):
    ami = image_id(ec2, "vireo-testguest")
    r = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=6, MaxCount=6,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "group", "Value": "pages"}]}])
    ids = [i["InstanceId"] for i in r["Instances"]]
    assert sorted(i["AmiLaunchIndex"] for i in r["Instances"]) == list(range(6))
    for iid in ids:
        wait_state(ec2, iid, "running")
    ec2.create_tags(Resources=ids[:2], Tags=[{"Key": "role", "Value": "web"}])
    flt = [{"Name": "tag:group", "Values": ["pages"]}]
    pages = list(ec2.get_paginator("describe_instances").paginate(Filters=flt, PaginationConfig={"PageSize": 5}))
    assert len(pages) == 2
    seen = [i["InstanceId"] for p in pages for res in p["Reservations"] for i in res["Instances"]]
    assert sorted(seen) == sorted(ids)

    def find(filters):
        out = ec2.describe_instances(Filters=filters)
        return sorted(i["InstanceId"] for res in out["Reservations"] for i in res["Instances"])

    assert find(flt + [{"Name": "tag:role", "Values": ["web"]}]) == sorted(ids[:2])
    assert find(flt + [{"Name": "instance-type", "Values": ["t3.nano"]}]) == sorted(ids)
    assert find(flt + [{"Name": "instance-type", "Values": ["m5.large"]}]) == []
    assert find(flt + [{"Name": "image-id", "Values": [ami]}, {"Name": "instance-state-name", "Values": ["running"]}]) == sorted(ids)
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [ids[0]]}])["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} == {("group", "pages"), ("role", "web")}
    ec2.delete_tags(Resources=[ids[0]], Tags=[{"Key": "role"}])
    assert find(flt + [{"Name": "tag:role", "Values": ["web"]}]) == [ids[1]]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instances(Filters=[{"Name": "flavour", "Values": ["x"]}])
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instances(InstanceIds=[ids[0]], MaxResults=5)
    assert error_code(e) == "InvalidParameterCombination"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instances(MaxResults=5, NextToken="not-a-token")
    assert error_code(e) == "InvalidParameterValue"

    status = ec2.describe_instance_status(InstanceIds=ids)["InstanceStatuses"]
    assert {s["InstanceState"]["Name"] for s in status} == {"running"}
    ec2.terminate_instances(InstanceIds=ids)
    for iid in ids:
        wait_state(ec2, iid, "terminated")


def test_client_token_makes_run_instances_idempotent(ec2):
    ami = image_id(ec2, "vireo-testguest")
    results = []

    def run():
        results.append(ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                                         ClientToken="token-concurrent-1"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {r["Instances"][0]["InstanceId"] for r in results}
    assert len(results) == 4 and len(ids) == 1, "four concurrent retries, one instance"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, ClientToken="token-concurrent-1")
    assert error_code(e) == "IdempotentParameterMismatch"
    iid = ids.pop()
    wait_state(ec2, iid, "running")
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_concurrent_operations_on_one_instance_are_serialized(ec2, vireod):
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "running")
    errors = []

    def hammer(op):
        c = vireod.client()
        for _ in range(5):
            try:
                if op == "stop":
                    c.stop_instances(InstanceIds=[iid], Force=True)
                elif op == "start":
                    c.start_instances(InstanceIds=[iid])
                else:
                    c.describe_instances(InstanceIds=[iid])
            except botocore.exceptions.ClientError as e:
                # Racing a transition is allowed to be refused, never anything else.
                if e.response["Error"]["Code"] != "IncorrectInstanceState":
                    errors.append(e)

    threads = [threading.Thread(target=hammer, args=(op,)) for op in ("stop", "start", "describe", "stop", "start")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Settles in a consistent state: at most one VMM for the instance.
    for _ in range(200):
        st = instance(ec2, iid)["State"]["Name"]
        if st in ("running", "stopped"):
            break
        import time
        time.sleep(0.1)
    assert st in ("running", "stopped")
    vmms = [p for p in vireod.vmm_pids() if iid.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(vmms) == (1 if st == "running" else 0), (st, vmms)
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_create_image_from_instance_and_launch_from_it(ec2, vireod):
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "running")
    inst_dir = os.path.join(vireod.data, "instances", iid)
    overlay = os.path.join(inst_dir, "root.qcow2")
    out = subprocess.run(["qemu-img", "info", "--output=json", overlay], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["format"] == "qcow2" and info["backing-filename"].endswith(f"images/{ami}/root.raw"), info
    # The small guest has no disk driver: while it is stopped, qemu-io writes what a guest would
    # have written, through the qcow2 overlay.
    ec2.stop_instances(InstanceIds=[iid], Force=True)
    wait_state(ec2, iid, "stopped")
    w = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 4096 4096", overlay], capture_output=True, text=True)
    assert w.returncode == 0, w.stderr
    new = ec2.create_image(InstanceId=iid, Name="from-instance-1")["ImageId"]
    img = ec2.describe_images(ImageIds=[new])["Images"][0]
    assert img["State"] == "available" and img["Name"] == "from-instance-1"
    iid2 = ec2.run_instances(ImageId=new, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, iid2, "running")
    wait_console(ec2, iid2, "VIREO-TESTGUEST idle")
    captured = os.path.join(vireod.data, "images", new, "root.raw")
    base = os.path.join(vireod.data, "images", ami, "root.raw")
    with open(captured, "rb") as f:
        assert f.read(21) == b"VIREO-TESTGUEST-DISK\n", "the image's own data"
        f.seek(4096)
        assert f.read(4096) == b"\x5a" * 4096, "what the instance wrote"
    with open(base, "rb") as f:
        f.seek(4096)
        assert f.read(4096) == b"\0" * 4096, "the source image never changes"
    # The new instance's disk is an overlay of the captured image and reads the same bytes.
    cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw",
                          os.path.join(vireod.data, "instances", iid2, "root.qcow2"), captured],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    ec2.terminate_instances(InstanceIds=[iid, iid2])
    wait_state(ec2, iid, "terminated")
    wait_state(ec2, iid2, "terminated")


def test_hibernate_then_start_resumes_instead_of_booting(ec2, vireod):
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                            UserData="hibernate me")["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "running")
    wait_console(ec2, iid, "VIREO-TESTGUEST idle")
    ch = ec2.stop_instances(InstanceIds=[iid], Hibernate=True)["StoppingInstances"][0]
    assert ch["CurrentState"]["Name"] == "stopping"
    wait_state(ec2, iid, "stopped")
    inst = instance(ec2, iid)
    assert inst["StateReason"]["Code"] == "Client.UserInitiatedHibernate"
    assert vireod.vmm_pids() == [] or all(iid.encode() not in open(f"/proc/{p}/cmdline", "rb").read() for p in vireod.vmm_pids())
    inst_dir = os.path.join(vireod.data, "instances", iid)
    assert os.path.exists(os.path.join(inst_dir, "hibernate.ok"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "t3.micro"})
    assert error_code(e) == "UnsupportedOperation"
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    # Resumed, not booted again: the guest printed its ready line once, and the snapshot is spent.
    assert console(ec2, iid).count("VIREO-TESTGUEST ready") == 1
    assert not os.path.exists(os.path.join(inst_dir, "hibernate.ok"))
    vmm = [p for p in vireod.vmm_pids() if iid.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(vmm) == 1 and b"--restore" in open(f"/proc/{vmm[0]}/cmdline", "rb").read()
    # A resumed instance stops and starts normally afterwards (a fresh boot).
    ec2.stop_instances(InstanceIds=[iid], Force=True)
    wait_state(ec2, iid, "stopped")
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    wait_console(ec2, iid, "VIREO-TESTGUEST ready cmdline")
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
