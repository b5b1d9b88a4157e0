"""boto3 drives instances' networking: every instance's primary interface (subnet, MAC, the
lowest free private address or the one asked for, groups), what Terraform's aws_instance reads
from DescribeInstances, ModifyInstanceAttribute GroupId.N, public addresses on launch and
Elastic IPs from `--public-cidr`, and terminate releasing all of it. The instances are real
VMs of the small test guest."""

import ipaddress
import os
import sqlite3

import botocore.exceptions
import pytest

from conftest import Vireod, image_id, instance, wait_state

POOL = "198.51.100.0/28"


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def vireod():
    v = Vireod("--public-cidr", POOL)
    yield v
    v.close()


@pytest.fixture(scope="module")
def net(ec2):
    vid = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    sid = ec2.create_subnet(VpcId=vid, CidrBlock="10.30.1.0/28")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="app", Description="app", VpcId=vid)["GroupId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vid)
    return {"vpc": vid, "subnet": sid, "sg": sg, "igw": igw}


def launch(ec2, **kw):
    ami = image_id(ec2, "vireo-testguest")
    r = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=kw.pop("MinCount", 1),
                          MaxCount=kw.pop("MaxCount", 1), **kw)
    return r["Instances"]


def db_rows(vireod, sql):
    db = sqlite3.connect(os.path.join(vireod.data, "state.db"))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_default_launch_lands_in_the_default_subnet_with_a_public_address(vireod, ec2):
    i = launch(ec2)[0]
    iid = i["InstanceId"]
    default = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    dsg = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [default["VpcId"]]},
                                                {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    wait_state(ec2, iid, "running")
    x = instance(ec2, iid)
    # What Terraform's aws_instance reads.
    assert x["VpcId"] == default["VpcId"] and x["SubnetId"] == default["SubnetId"]
    assert x["PrivateIpAddress"] == "172.31.0.4"
    assert x["PrivateDnsName"] == "ip-172-31-0-4.vireo-local-1.compute.internal"
    assert ipaddress.ip_address(x["PublicIpAddress"]) in ipaddress.ip_network(POOL)
    assert x["PublicDnsName"]
    assert x["SecurityGroups"] == [{"GroupId": dsg["GroupId"], "GroupName": "default"}]
    assert x["SourceDestCheck"] is True
    [eni] = x["NetworkInterfaces"]
    assert eni["NetworkInterfaceId"].startswith("eni-")
    assert eni["MacAddress"].startswith("02:") and len(eni["MacAddress"]) == 17
    assert eni["Attachment"]["DeviceIndex"] == 0 and eni["Attachment"]["Status"] == "attached"
    assert eni["Attachment"]["AttachmentId"].startswith("eni-attach-")
    assert eni["Attachment"]["DeleteOnTermination"] is True
    assert eni["Association"]["PublicIp"] == x["PublicIpAddress"]
    assert eni["PrivateIpAddresses"][0]["Primary"] is True
    assert eni["Groups"] == x["SecurityGroups"]
    # DescribeNetworkInterfaces tells the same.
    d = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["NetworkInterfaceId"]])["NetworkInterfaces"][0]
    assert d["Attachment"]["InstanceId"] == iid and d["Status"] == "in-use"
    assert d["PrivateIpAddress"] == "172.31.0.4" and d["MacAddress"] == eni["MacAddress"]
    assert d["Association"]["PublicIp"] == x["PublicIpAddress"]
    for f, v in [("attachment.instance-id", iid), ("private-ip-address", "172.31.0.4"),
                 ("group-id", dsg["GroupId"]), ("association.public-ip", x["PublicIpAddress"])]:
        got = ec2.describe_network_interfaces(Filters=[{"Name": f, "Values": [v]}])["NetworkInterfaces"]
        assert [n["NetworkInterfaceId"] for n in got] == [eni["NetworkInterfaceId"]], f
    # A /20 has 4091 usable addresses; this instance holds one.
    assert default["AvailableIpAddressCount"] == 4091 - 1
    # Terminate releases the interface, its address and its public address.
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert not ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["NetworkInterfaces"]
    assert db_rows(vireod, "SELECT COUNT(*) FROM public_addresses")[0][0] == 0
    assert instance(ec2, iid).get("NetworkInterfaces", []) == []
    # The address is free again: the next launch gets it.
    j = launch(ec2)[0]
    assert j["PrivateIpAddress"] == "172.31.0.4"
    ec2.terminate_instances(InstanceIds=[j["InstanceId"]])


def test_terraform_aws_instance_in_a_subnet_with_groups(vireod, ec2, net):
    dflt = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [net["vpc"]]},
                                                 {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    xs = launch(ec2, SubnetId=net["subnet"], SecurityGroupIds=[net["sg"]], MinCount=2, MaxCount=2)
    ips = sorted(x["PrivateIpAddress"] for x in xs)
    assert ips == ["10.30.1.4", "10.30.1.5"], "the lowest free addresses after the four reserved"
    for x in xs:
        assert x["SubnetId"] == net["subnet"] and x["VpcId"] == net["vpc"]
        assert x["SecurityGroups"] == [{"GroupId": net["sg"], "GroupName": "app"}]
        assert "PublicIpAddress" not in x, "the subnet does not map public addresses"
    # A given address, and one taken already.
    y = launch(ec2, SubnetId=net["subnet"], PrivateIpAddress="10.30.1.9")[0]
    assert y["PrivateIpAddress"] == "10.30.1.9"
    assert y["SecurityGroups"] == [{"GroupId": dflt["GroupId"], "GroupName": "default"}]
    before = db_rows(vireod, "SELECT COUNT(*) FROM instances")[0][0]
    for kw, want in [
        ({"PrivateIpAddress": "10.30.1.9"}, "InvalidIPAddress.InUse"),
        ({"PrivateIpAddress": "10.30.1.2"}, "InvalidParameterValue"),
        ({"PrivateIpAddress": "10.30.2.4"}, "InvalidParameterValue"),
        ({"SecurityGroupIds": ["sg-0123456789abcdef0"]}, "InvalidGroup.NotFound"),
        ({"SecurityGroupIds": ["sg-nope"]}, "InvalidGroupId.Malformed"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            launch(ec2, SubnetId=net["subnet"], **kw)
        assert code(e) == want, kw
    for kw, want in [({"SubnetId": "subnet-0123456789abcdef0"}, "InvalidSubnetID.NotFound"),
                     ({"SubnetId": "subnet-nope"}, "InvalidSubnetID.Malformed")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            launch(ec2, **kw)
        assert code(e) == want, kw
    # A group of another VPC.
    default_sg = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]},
                                                       {"Name": "vpc-id", "Values": [
                                                           ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]]}])["SecurityGroups"][0]["GroupId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        launch(ec2, SubnetId=net["subnet"], SecurityGroupIds=[default_sg])
    assert code(e) == "InvalidParameterValue"
    # More instances than the /28 has addresses for (11 usable, 3 taken): none launched.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        launch(ec2, SubnetId=net["subnet"], MinCount=9, MaxCount=9)
    assert code(e) == "InsufficientFreeAddressesInSubnet"
    assert db_rows(vireod, "SELECT COUNT(*) FROM instances")[0][0] == before
    # The group is in use.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_security_group(GroupId=net["sg"])
    assert code(e) == "DependencyViolation"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_subnet(SubnetId=net["subnet"])
    assert code(e) == "DependencyViolation"
    # ModifyInstanceAttribute GroupId.N on a running instance; DescribeInstanceAttribute groupSet.
    iid = xs[0]["InstanceId"]
    wait_state(ec2, iid, "running")
    ec2.modify_instance_attribute(InstanceId=iid, Groups=[net["sg"], dflt["GroupId"]])
    got = instance(ec2, iid)["SecurityGroups"]
    assert [g["GroupId"] for g in got] == [net["sg"], dflt["GroupId"]]
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="groupSet")["Groups"]
    assert [g["GroupId"] for g in attr] == [net["sg"], dflt["GroupId"]]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId=iid, Groups=["sg-0123456789abcdef0"])
    assert code(e) == "InvalidGroup.NotFound"
    assert [g["GroupId"] for g in instance(ec2, iid)["SecurityGroups"]] == [net["sg"], dflt["GroupId"]]
    ec2.modify_instance_attribute(InstanceId=iid, SourceDestCheck={"Value": False})
    assert instance(ec2, iid)["SourceDestCheck"] is False
    ids = [x["InstanceId"] for x in xs] + [y["InstanceId"]]
    ec2.terminate_instances(InstanceIds=ids)
    for i in ids:
        wait_state(ec2, i, "terminated")
    assert not ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [net["subnet"]]}])[
        "NetworkInterfaces"]


def test_network_interface_form_and_public_addresses(vireod, ec2, net):
    x = launch(ec2, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": net["subnet"], "Groups": [net["sg"]],
                                        "AssociatePublicIpAddress": True, "PrivateIpAddress": "10.30.1.10"}])[0]
    assert x["PrivateIpAddress"] == "10.30.1.10"
    pub = x["PublicIpAddress"]
    assert ipaddress.ip_address(pub) in ipaddress.ip_network(POOL)
    assert x["NetworkInterfaces"][0]["Association"]["IpOwnerId"] == "amazon"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        launch(ec2, SubnetId=net["subnet"], NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": net["subnet"]}])
    assert code(e) == "InvalidParameterCombination"
    # An Elastic IP replaces the launch-time address; released, the instance has none.
    a = ec2.allocate_address(Domain="vpc", TagSpecifications=[
        {"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "eip"}]}])
    assert a["AllocationId"].startswith("eipalloc-") and a["Domain"] == "vpc"
    assoc = ec2.associate_address(AllocationId=a["AllocationId"], InstanceId=x["InstanceId"])["AssociationId"]
    assert assoc.startswith("eipassoc-")
    got = instance(ec2, x["InstanceId"])
    assert got["PublicIpAddress"] == a["PublicIp"]
    d = ec2.describe_addresses(AllocationIds=[a["AllocationId"]])["Addresses"][0]
    assert (d["InstanceId"], d["PrivateIpAddress"], d["AssociationId"], d["PublicIp"]) == \
        (x["InstanceId"], "10.30.1.10", assoc, a["PublicIp"])
    assert d["Tags"] == [{"Key": "Name", "Value": "eip"}]
    assert ec2.describe_addresses(PublicIps=[a["PublicIp"]])["Addresses"][0]["AllocationId"] == a["AllocationId"]
    assert ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [x["InstanceId"]]}])["Addresses"][0][
        "AllocationId"] == a["AllocationId"]
    # The launch-time address went back to the pool.
    assert pub not in [r[0] for r in db_rows(vireod, "SELECT public_ip FROM public_addresses")]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.release_address(AllocationId=a["AllocationId"])
    assert code(e) == "InvalidIPAddress.InUse"
    # The gateway cannot be detached while the VPC has public addresses mapped.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.detach_internet_gateway(InternetGatewayId=net["igw"], VpcId=net["vpc"])
    assert code(e) == "DependencyViolation"
    ec2.disassociate_address(AssociationId=assoc)
    assert "PublicIpAddress" not in instance(ec2, x["InstanceId"])
    ec2.release_address(AllocationId=a["AllocationId"])
    for call, want in [(lambda: ec2.release_address(AllocationId=a["AllocationId"]), "InvalidAllocationID.NotFound"),
                       (lambda: ec2.disassociate_address(AssociationId=assoc), "InvalidAssociationID.NotFound"),
                       (lambda: ec2.allocate_address(Domain="standard"), "InvalidParameterValue"),
                       (lambda: ec2.describe_addresses(PublicIps=["203.0.113.9"]), "InvalidAddress.NotFound")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e) == want
    # The pool (a /28: 13 usable addresses) runs out.
    got = []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        for _ in range(20):
            got.append(ec2.allocate_address(Domain="vpc")["AllocationId"])
    assert code(e) == "AddressLimitExceeded"
    assert 10 <= len(got) <= 13
    for g in got:
        ec2.release_address(AllocationId=g)
    ec2.terminate_instances(InstanceIds=[x["InstanceId"]])
    wait_state(ec2, x["InstanceId"], "terminated")


def test_no_pool_means_no_public_addresses(ec2):
    """A vireod without --public-cidr: launches get no public address, Elastic IPs a clear error."""
    v = Vireod()
    try:
        c = v.client()
        x = launch(c)[0]
        assert "PublicIpAddress" not in x and x["PrivateIpAddress"] == "172.31.0.4"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.allocate_address(Domain="vpc")
        assert code(e) == "AddressLimitExceeded"
        assert "--public-cidr" in e.value.response["Error"]["Message"]
        sid = c.describe_subnets()["Subnets"][0]["SubnetId"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            launch(c, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sid, "AssociatePublicIpAddress": True}])
        assert code(e) == "AddressLimitExceeded"
        c.terminate_instances(InstanceIds=[x["InstanceId"]])
    finally:
        v.close()


def test_describe_instances_network_filters(vireod, ec2, net):
    """The network filters of DescribeInstances (Terraform's aws_instance data source and
    aws_instances use them): the primary interface's VPC, subnet, addresses and DNS name, the
    groups, and every interface's fields."""
    x = launch(ec2, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": net["subnet"], "Groups": [net["sg"]],
                                        "AssociatePublicIpAddress": True, "PrivateIpAddress": "10.30.1.12"}])[0]
    y = launch(ec2)[0]  # the default subnet, the default VPC's default group
    iid, other = x["InstanceId"], y["InstanceId"]
    eni = x["NetworkInterfaces"][0]["NetworkInterfaceId"]

    def found(name, *values):
        r = ec2.describe_instances(Filters=[{"Name": name, "Values": list(values)}])
        return {i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]} & {iid, other}

    assert found("vpc-id", net["vpc"]) == {iid}
    assert found("vpc-id", y["VpcId"]) == {other}
    assert found("subnet-id", net["subnet"]) == {iid}
    assert found("private-ip-address", "10.30.1.12") == {iid}
    assert found("private-ip-address", "10.30.1.*") == {iid}
    assert found("ip-address", x["PublicIpAddress"]) == {iid}
    assert found("private-dns-name", x["PrivateDnsName"]) == {iid}
    assert x["PrivateDnsName"].startswith("ip-10-30-1-12.")
    assert found("instance.group-id", net["sg"]) == {iid}
    assert found("instance.group-name", "app") == {iid}
    assert found("instance.group-name", "default") == {other}
    assert found("network-interface.network-interface-id", eni) == {iid}
    assert found("network-interface.subnet-id", net["subnet"], y["SubnetId"]) == {iid, other}
    assert found("network-interface.vpc-id", net["vpc"]) == {iid}
    assert found("network-interface.addresses.private-ip-address", y["PrivateIpAddress"]) == {other}
    assert found("subnet-id", "subnet-0123456789abcdef0") == set()
    # Combined with the other filters: all must match.
    r = ec2.describe_instances(Filters=[{"Name": "subnet-id", "Values": [net["subnet"]]},
                                        {"Name": "instance-id", "Values": [other]}])
    assert r["Reservations"] == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instances(Filters=[{"Name": "network-interface.bogus", "Values": ["x"]}])
    assert code(e) == "InvalidParameterValue"
    ec2.terminate_instances(InstanceIds=[iid, other])
    for i in (iid, other):
        wait_state(ec2, i, "terminated")
    # A terminated instance has no interfaces left: the network filters no longer find it.
    assert found("subnet-id", net["subnet"]) == set()
