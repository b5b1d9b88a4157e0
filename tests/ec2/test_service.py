"""vireod as a service: restarts that adopt running VMMs, capacity, authentication, bad input,
and the AWS CLI as a second real client."""

import datetime
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest

from conftest import GUEST, REGION, VIREOD, VMM, Vireod, aws_cli, console, image_id, instance, wait_console, wait_state


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def count_instances(ec2):
    return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])


def test_restart_adopts_running_vmms_and_reports_dead_ones():
    v = Vireod()
    try:
        ec2 = v.client()
        ami = image_id(ec2, "vireo-testguest")
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=2, MaxCount=2)["Instances"]]
        for iid in ids:
            wait_state(ec2, iid, "running")
        pids = {}
        for pid in v.vmm_pids():
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            pids[next(i for i in ids if i.encode() in cmd)] = pid
        v.kill(signal.SIGKILL)
        # vireod is gone; its VMMs are not.
        for pid in pids.values():
            os.kill(pid, 0)
        survivor, victim = ids
        os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.5)
        v.start()
        ec2 = v.client()
        assert instance(ec2, survivor)["State"]["Name"] == "running"
        assert v.vmm_pids() == [pids[survivor]], "the same VMM process, adopted"
        dead = instance(ec2, victim)
        assert dead["State"]["Name"] == "stopped"
        assert dead["StateReason"]["Code"] == "Server.InternalError"
        # The adopted VMM is fully managed again: its console, and a stop that ends it.
        assert "VIREO-TESTGUEST ready" in console(ec2, survivor)
        ec2.stop_instances(InstanceIds=[survivor], Force=True)
        wait_state(ec2, survivor, "stopped")
        assert v.vmm_pids() == []
        ec2.start_instances(InstanceIds=[victim])
        wait_state(ec2, victim, "running")
        ec2.terminate_instances(InstanceIds=ids)
        for iid in ids:
            wait_state(ec2, iid, "terminated")
    finally:
        v.close()


def test_capacity_is_all_or_nothing():
    v = Vireod("--capacity-vcpus", "4", "--capacity-memory-mib", "4096")
    try:
        ec2 = v.client()
        ami = image_id(ec2, "vireo-testguest")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=3, MaxCount=3)
        assert error_code(e) == "InsufficientInstanceCapacity"
        assert count_instances(ec2) == 0 and v.vmm_pids() == []
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(ImageId=ami, InstanceType="t3.large", MinCount=1, MaxCount=1)
        assert error_code(e) == "InsufficientInstanceCapacity", "8 GiB does not fit in 4 GiB"
        # MinCount 1, MaxCount 5: as many as fit (2 x 2 vCPUs).
        r = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=5)
        ids = [i["InstanceId"] for i in r["Instances"]]
        assert len(ids) == 2
        for iid in ids:
            wait_state(ec2, iid, "running")
        ec2.stop_instances(InstanceIds=[ids[0]], Force=True)
        wait_state(ec2, ids[0], "stopped")
        # A stopped instance gives its capacity back, so a new one fits, and the stopped one
        # cannot start again until there is room.
        other = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.start_instances(InstanceIds=[ids[0]])
        assert error_code(e) == "InsufficientInstanceCapacity"
        ec2.terminate_instances(InstanceIds=ids + [other])
        for iid in ids + [other]:
            wait_state(ec2, iid, "terminated")
    finally:
        v.close()


def raw_request(v, params, sign=True, secret=None, when=None):
    body = "&".join(f"{k}={urllib.request.quote(str(val), safe='')}" for k, val in params.items()).encode()
    req = botocore.awsrequest.AWSRequest(method="POST", url=v.endpoint + "/", data=body,
                                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    if sign:
        creds = botocore.credentials.Credentials(v.key_id, secret or v.secret)
        signer = botocore.auth.SigV4Auth(creds, "ec2", REGION)
        if when is not None:
            real = botocore.auth.get_current_datetime
            botocore.auth.get_current_datetime = lambda: when
            try:
                signer.add_auth(req)
            finally:
                botocore.auth.get_current_datetime = real
        else:
            signer.add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(prepared.url, data=prepared.body, method="POST", headers=dict(prepared.headers))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_register_image_reads_files_only_from_the_import_directories():
    # vireod copies an image's files as root, and the image's guests can read them: a caller
    # must not be able to turn any host file into an image.
    imports = tempfile.mkdtemp(prefix="vireo-import-")
    v = None
    try:
        shutil.copy(os.path.join(GUEST, "testguest.elf"), os.path.join(imports, "kernel"))
        with open(os.path.join(imports, "good.json"), "w") as f:
            f.write('{"kernel": "kernel"}')
        with open(os.path.join(imports, "sneaky.json"), "w") as f:
            f.write('{"kernel": "kernel", "root_disk": "/etc/passwd"}')
        os.symlink("/etc/passwd", os.path.join(imports, "link"))
        v = Vireod("--import-dir", imports)
        ec2 = v.client()
        images = len(ec2.describe_images()["Images"])
        # Outside, in every form: a manifest, a file a manifest names, the parts given
        # directly, `..`, a link out of the directory, a file that does not exist. The
        # answer is the same whether the file exists or not.
        the_default = os.path.join(v.data, "import")  # not an import directory when --import-dir is given
        shutil.copy(os.path.join(imports, "good.json"), the_default)
        for args in [
            dict(ImageLocation="/etc/passwd"),
            dict(ImageLocation=os.path.join(imports, "sneaky.json")),
            dict(ImageLocation=os.path.join(the_default, "good.json")),
            dict(ImageLocation=os.path.join(imports, "..", os.path.basename(imports), "good.json")),
            dict(ImageLocation="/no/such/manifest.json"),
            dict(KernelId="/etc/passwd"),
            dict(KernelId=os.path.join(imports, "link")),
            # RootDisk is vireo's own parameter (the vireo CLI sends it; boto3 cannot).
            dict(KernelId=os.path.join(imports, "kernel"), RootDisk="/etc/shadow"),
            dict(KernelId=os.path.join(imports, "kernel"), RamdiskId="/proc/self/environ"),
        ]:
            status, body = raw_request(v, dict(Action="RegisterImage", Version="2016-11-15", Name="stolen", **args))
            assert status == 400 and "<Code>InvalidParameterValue</Code>" in body, (args, body)
            assert "outside the directories vireod imports images from" in body, (args, body)
            assert os.path.realpath(imports) in body, body
        assert len(ec2.describe_images()["Images"]) == images, "nothing registered"
        assert [d for d in os.listdir(os.path.join(v.data, "images")) if d.startswith(".")] == []
        # Inside: registered, by manifest and by parts.
        for args in [dict(ImageLocation=os.path.join(imports, "good.json")),
                     dict(KernelId=os.path.join(imports, "kernel"))]:
            new = ec2.register_image(Name="imported", **args)["ImageId"]
            assert ec2.describe_images(ImageIds=[new])["Images"][0]["State"] == "available"
            ec2.deregister_image(ImageId=new)
    finally:
        if v:
            v.close()
        shutil.rmtree(imports, ignore_errors=True)


def test_an_import_directory_that_is_not_there_stops_vireod_at_start():
    v = Vireod()
    try:
        v.kill(signal.SIGTERM)
        out = subprocess.run([VIREOD, "serve", "--data-dir", v.data, "--listen", "127.0.0.1:0",
                              "--vmm", VMM, "--import-dir", "/no/such/dir"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert "--import-dir" in out.stderr and "/no/such/dir" in out.stderr, out.stderr
    finally:
        v.close()


def test_bad_input_gets_ec2_errors_and_changes_nothing(vireod, ec2):
    ami = image_id(ec2, "vireo-testguest")
    before = count_instances(ec2)
    images_before = len(ec2.describe_images()["Images"])
    run = {"Action": "RunInstances", "Version": "2016-11-15", "ImageId": ami, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.nano"}

    status, body = raw_request(vireod, run, sign=False)
    assert status == 401 and "<Code>AuthFailure</Code>" in body and "missing Authentication Token" in body
    status, body = raw_request(vireod, run, secret="x" * 40)
    assert status == 401 and "<Code>AuthFailure</Code>" in body
    stale = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    status, body = raw_request(vireod, run, when=stale)
    assert status == 401 and "<Code>AuthFailure</Code>" in body and "Signature expired" in body
    status, body = raw_request(vireod, {"Action": "LaunchRockets", "Version": "2016-11-15"})
    assert status == 400 and "<Code>InvalidAction</Code>" in body
    status, body = raw_request(vireod, dict(run, Frobnicate="1"))
    assert status == 400 and "<Code>UnknownParameter</Code>" in body
    status, body = raw_request(vireod, {k: v for k, v in run.items() if k != "ImageId"})
    assert status == 400 and "<Code>MissingParameter</Code>" in body
    status, body = raw_request(vireod, dict(run, MinCount="many"))
    assert status == 400 and "<Code>InvalidParameterValue</Code>" in body
    status, body = raw_request(vireod, dict(run, UserData="!!not base64!!"))
    assert status == 400 and "<Code>InvalidParameterValue</Code>" in body

    bad = [
        (dict(ImageId="ami-12"), "InvalidAMIID.Malformed"),
        (dict(ImageId="ami-0123456789abcdef0"), "InvalidAMIID.NotFound"),
        (dict(ImageId=ami, InstanceType="t3.gigantic"), "InvalidParameterValue"),
        (dict(ImageId=ami, UserData="x" * (16 * 1024 + 1)), "InvalidParameterValue"),
        (dict(ImageId=ami, MinCount=2, MaxCount=1), "InvalidParameterValue"),
    ]
    for extra, code in bad:
        args = dict(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)
        args.update(extra)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(**args)
        assert error_code(e) == code, (extra, e.value)
    for call, code in [
        (lambda: ec2.stop_instances(InstanceIds=["i-xyz"]), "InvalidInstanceID.Malformed"),
        (lambda: ec2.stop_instances(InstanceIds=["i-0123456789abcdef0"]), "InvalidInstanceID.NotFound"),
        (lambda: ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"]), "InvalidInstanceID.NotFound"),
        (lambda: ec2.get_console_output(InstanceId="instance-1"), "InvalidInstanceID.Malformed"),
        (lambda: ec2.create_tags(Resources=["i-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}]), "InvalidInstanceID.NotFound"),
        (lambda: ec2.create_tags(Resources=[ami], Tags=[{"Key": "aws:x", "Value": "b"}]), "InvalidParameterValue"),
        (lambda: ec2.deregister_image(ImageId="ami-0123456789abcdef0"), "InvalidAMIID.NotFound"),
        (lambda: ec2.register_image(Name="nope-image", ImageLocation="/nope.json"), "InvalidParameterValue"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert error_code(e) == code, (code, e.value)
    assert count_instances(ec2) == before, "no instance half-created"
    assert len(ec2.describe_images()["Images"]) == images_before
    leftovers = [d for d in os.listdir(os.path.join(vireod.data, "images")) if d.startswith(".")]
    assert leftovers == []


def test_aws_cli_drives_vireod(vireod):
    def cli(*args):
        return aws_cli(vireod, *args)

    ami = cli("describe-images", "--filters", "Name=name,Values=vireo-testguest")["Images"][0]["ImageId"]
    iid = cli("run-instances", "--image-id", ami, "--instance-type", "t3.nano", "--count", "1",
              "--user-data", "from the aws cli")["Instances"][0]["InstanceId"]
    deadline = time.time() + 60
    while cli("describe-instances", "--instance-ids", iid)["Reservations"][0]["Instances"][0]["State"]["Name"] != "running":
        assert time.time() < deadline
        time.sleep(0.2)
    out = cli("get-console-output", "--instance-id", iid)["Output"]
    assert "user-data: from the aws cli" in out
    types = cli("describe-instance-types", "--instance-types", "c5.large")["InstanceTypes"]
    assert types[0]["VCpuInfo"]["DefaultVCpus"] == 2
    cli("terminate-instances", "--instance-ids", iid)
    bad = aws_cli(vireod, "start-instances", "--instance-ids", "i-0123456789abcdef0", ok=False)
    assert bad.returncode != 0 and "InvalidInstanceID.NotFound" in bad.stderr
