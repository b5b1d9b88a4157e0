"""Instance metadata options through boto3 and the AWS CLI: RunInstances MetadataOptions,
DescribeInstances' MetadataOptions, ModifyInstanceMetadataOptions, EC2's errors for bad values
(nothing launched or changed), and the metadata service vireod answers in the instance's VPC
namespace, which sees every change at once (docs/metadata.md). Root (the data plane)."""

import hashlib
import os
import subprocess
import sys

import botocore.exceptions
import pytest

from conftest import aws_cli, image_id, instance, wait_state

DEFAULTS = {
    "State": "applied",
    "HttpTokens": "optional",
    "HttpPutResponseHopLimit": 1,
    "HttpEndpoint": "enabled",
    "HttpProtocolIpv6": "disabled",
    "InstanceMetadataTags": "disabled",
}


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def launch(ec2, **kw):
    ami = image_id(ec2, "vireo-testguest")
    return ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                             **kw)["Instances"][0]


def options(ec2, iid):
    return instance(ec2, iid)["MetadataOptions"]


def instance_count(ec2):
    return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])


def test_run_instances_takes_metadata_options_and_describe_shows_them(ec2):
    plain = launch(ec2)
    assert plain["MetadataOptions"] == DEFAULTS, "RunInstances' answer shows them too"
    assert options(ec2, plain["InstanceId"]) == DEFAULTS
    tight = launch(ec2, MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2,
                                         "HttpEndpoint": "disabled", "InstanceMetadataTags": "enabled",
                                         "HttpProtocolIpv6": "disabled"})
    assert options(ec2, tight["InstanceId"]) == dict(
        DEFAULTS, HttpTokens="required", HttpPutResponseHopLimit=2, HttpEndpoint="disabled",
        InstanceMetadataTags="enabled")
    some = launch(ec2, MetadataOptions={"HttpPutResponseHopLimit": 64})
    assert options(ec2, some["InstanceId"]) == dict(DEFAULTS, HttpPutResponseHopLimit=64)
    ids = [plain["InstanceId"], tight["InstanceId"], some["InstanceId"]]
    ec2.terminate_instances(InstanceIds=ids)
    for iid in ids:
        wait_state(ec2, iid, "terminated")


@pytest.mark.parametrize("opts,code", [
    ({"HttpTokens": "maybe"}, "InvalidParameterValue"),
    ({"HttpTokens": "Required"}, "InvalidParameterValue"),
    ({"HttpPutResponseHopLimit": 0}, "InvalidParameterValue"),
    ({"HttpPutResponseHopLimit": 65}, "InvalidParameterValue"),
    ({"HttpPutResponseHopLimit": -1}, "InvalidParameterValue"),
    ({"HttpEndpoint": "on"}, "InvalidParameterValue"),
    ({"InstanceMetadataTags": "yes"}, "InvalidParameterValue"),
    ({"HttpProtocolIpv6": "sometimes"}, "InvalidParameterValue"),
    ({"HttpProtocolIpv6": "enabled"}, "UnsupportedOperation"),
])
def test_bad_options_launch_nothing(ec2, opts, code):
    before = instance_count(ec2)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        launch(ec2, MetadataOptions=opts)
    assert error_code(e) == code, e.value.response["Error"]
    assert instance_count(ec2) == before


def test_modify_instance_metadata_options(ec2):
    iid = launch(ec2)["InstanceId"]
    wait_state(ec2, iid, "running")
    out = ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="required",
                                               HttpPutResponseHopLimit=3)
    assert out["InstanceId"] == iid
    want = dict(DEFAULTS, HttpTokens="required", HttpPutResponseHopLimit=3)
    assert out["InstanceMetadataOptions"] == want
    assert options(ec2, iid) == want
    # One option at a time: the others keep their values.
    out = ec2.modify_instance_metadata_options(InstanceId=iid, HttpEndpoint="disabled")
    want = dict(want, HttpEndpoint="disabled")
    assert out["InstanceMetadataOptions"] == want
    out = ec2.modify_instance_metadata_options(InstanceId=iid, InstanceMetadataTags="enabled",
                                               HttpProtocolIpv6="disabled")
    want = dict(want, InstanceMetadataTags="enabled")
    assert options(ec2, iid) == want

    # Bad values change nothing.
    for kw, code in [({"HttpTokens": "nope"}, "InvalidParameterValue"),
                     ({"HttpPutResponseHopLimit": 100}, "InvalidParameterValue"),
                     ({"HttpTokens": "optional", "HttpEndpoint": "maybe"}, "InvalidParameterValue"),
                     ({"HttpProtocolIpv6": "enabled"}, "UnsupportedOperation"),
                     ({}, "MissingParameter")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.modify_instance_metadata_options(InstanceId=iid, **kw)
        assert error_code(e) == code, kw
        assert options(ec2, iid) == want, kw
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="optional", DryRun=True)
    assert error_code(e) == "DryRunOperation"
    assert options(ec2, iid) == want
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_metadata_options(InstanceId="i-0123456789abcdef0", HttpTokens="optional")
    assert error_code(e) == "InvalidInstanceID.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_metadata_options(InstanceId="i-nope", HttpTokens="optional")
    assert error_code(e) == "InvalidInstanceID.Malformed"

    # A stopped instance's options change too; a terminated one's cannot.
    ec2.stop_instances(InstanceIds=[iid], Force=True)
    wait_state(ec2, iid, "stopped")
    ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="optional", HttpEndpoint="enabled")
    assert options(ec2, iid) == dict(want, HttpTokens="optional", HttpEndpoint="enabled")
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="required")
    assert error_code(e) == "IncorrectInstanceState"


def test_the_aws_cli(vireod, ec2):
    ami = image_id(ec2, "vireo-testguest")
    out = aws_cli(vireod, "run-instances", "--image-id", ami, "--instance-type", "t3.nano",
                  "--metadata-options", "HttpTokens=required,HttpPutResponseHopLimit=2")
    iid = out["Instances"][0]["InstanceId"]
    got = aws_cli(vireod, "describe-instances", "--instance-ids", iid,
                  "--query", "Reservations[0].Instances[0].MetadataOptions")
    assert got == dict(DEFAULTS, HttpTokens="required", HttpPutResponseHopLimit=2)
    out = aws_cli(vireod, "modify-instance-metadata-options", "--instance-id", iid,
                  "--http-tokens", "optional", "--http-endpoint", "disabled")
    assert out["InstanceMetadataOptions"]["HttpTokens"] == "optional"
    assert out["InstanceMetadataOptions"]["HttpEndpoint"] == "disabled"
    before = instance_count(ec2)
    bad = aws_cli(vireod, "run-instances", "--image-id", ami, "--instance-type", "t3.nano",
                  "--metadata-options", "HttpPutResponseHopLimit=99", ok=False)
    assert bad.returncode != 0 and "InvalidParameterValue" in bad.stderr, bad.stderr
    assert instance_count(ec2) == before
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


# --- the service itself, in the instance's VPC namespace ---------------------------------------

CLIENT = r"""
import socket, sys
src, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
headers = sys.argv[4:]
s = socket.create_connection(("169.254.169.254", 80), timeout=5, source_address=(src, 0))
req = f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n"
req += "".join(h + "\r\n" for h in headers) + "\r\n"
s.sendall(req.encode())
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
head, _, body = out.partition(b"\r\n\r\n")
sys.stdout.write(head.split(b" ")[1].decode() + "\n")
sys.stdout.buffer.write(body)
"""


def vpc_ns(v, vpc):
    return "vireo-{}-{}-h0".format(hashlib.sha256(os.path.abspath(v.data).encode()).hexdigest()[:4], vpc)


def ask(ns, src, method, path, *headers):
    """An HTTP request to the metadata service from `src` inside namespace `ns`: (status, body)."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, src, method, path,
                          *headers], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    status, _, body = out.stdout.partition(b"\n")
    return int(status), body


def test_the_service_answers_in_the_vpc_namespace_and_follows_the_options(vireod, ec2):
    """The testguest has no network stack of its own, so the request is made inside the VPC's
    namespace with the instance's address put on its loopback for the test: the address is
    what vireod finds the instance by. (Guests reach it through their router: the lab tests
    and crates/control/tests/imds_netns.rs.)"""
    inst = launch(ec2, UserData="hello metadata", MetadataOptions={"HttpPutResponseHopLimit": 2})
    iid = inst["InstanceId"]
    wait_state(ec2, iid, "running")
    eni = instance(ec2, iid)["NetworkInterfaces"][0]
    ip, vpc = eni["PrivateIpAddress"], eni["VpcId"]
    ns = vpc_ns(vireod, vpc)
    listening = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"], capture_output=True,
                               text=True, check=True).stdout
    assert "169.254.169.254:80" in listening, listening
    # Not an instance's address: nothing to see.
    assert ask(ns, "169.254.169.254", "GET", "/latest/meta-data/")[0] == 403
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "lo"], check=True)
    try:
        status, token = ask(ns, ip, "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 300")
        assert status == 200, token
        tok = f"X-aws-ec2-metadata-token: {token.decode()}"
        assert ask(ns, ip, "GET", "/latest/meta-data/instance-id", tok) == (200, iid.encode())
        assert ask(ns, ip, "GET", "/latest/meta-data/local-ipv4") == (200, ip.encode())
        assert ask(ns, ip, "GET", "/latest/user-data", tok) == (200, b"hello metadata")
        assert ask(ns, ip, "GET", "/latest/meta-data/placement/availability-zone")[1] == \
            inst["Placement"]["AvailabilityZone"].encode()
        mac = eni["MacAddress"]
        assert ask(ns, ip, "GET", f"/latest/meta-data/network/interfaces/macs/{mac}/subnet-id")[1] == \
            eni["SubnetId"].encode()
        assert ask(ns, ip, "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 300",
                   "X-Forwarded-For: 10.1.2.3")[0] == 403
        # Each change is in force for the next request.
        ec2.modify_instance_metadata_options(InstanceId=iid, HttpTokens="required")
        assert ask(ns, ip, "GET", "/latest/meta-data/instance-id")[0] == 401
        assert ask(ns, ip, "GET", "/latest/meta-data/instance-id", tok)[0] == 200
        ec2.create_tags(Resources=[iid], Tags=[{"Key": "Name", "Value": "imds"}])
        assert ask(ns, ip, "GET", "/latest/meta-data/tags/instance/Name", tok)[0] == 404
        ec2.modify_instance_metadata_options(InstanceId=iid, InstanceMetadataTags="enabled")
        assert ask(ns, ip, "GET", "/latest/meta-data/tags/instance/Name", tok) == (200, b"imds")
        ec2.modify_instance_metadata_options(InstanceId=iid, HttpEndpoint="disabled")
        assert ask(ns, ip, "GET", "/latest/meta-data/instance-id", tok)[0] == 403
    finally:
        subprocess.run(["ip", "-n", ns, "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
