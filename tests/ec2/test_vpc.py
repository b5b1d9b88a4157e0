"""boto3 and the AWS CLI drive vireod's VPCs: the default VPC, CreateVpc/DeleteVpc and their
attributes, subnets, network ACLs, internet gateways and route tables, with the call sequences
Terraform's aws_vpc, aws_subnet, aws_internet_gateway and aws_route_table make, and EC2's errors
for bad input (with nothing created)."""

import os
import sqlite3

import botocore.exceptions
import pytest

from conftest import REGION, aws_cli


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def count(vireod, table):
    db = sqlite3.connect(os.path.join(vireod.data, "state.db"))
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def counts(vireod):
    return {t: count(vireod, t) for t in
            ("vpcs", "subnets", "security_groups", "sg_rules", "route_tables", "routes",
             "rtb_associations", "network_acls", "internet_gateways", "tags")}


def test_the_default_vpc_exists_with_its_subnet_group_table_and_acl(vireod, ec2):
    assert "default VPC:" in vireod.init_output
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert len(vpcs) == 1
    v = vpcs[0]
    assert v["CidrBlock"] == "172.31.0.0/16" and v["IsDefault"] and v["State"] == "available"
    assert v["CidrBlockAssociationSet"][0]["CidrBlockState"]["State"] == "associated"
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]},
                                            {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    assert len(subnets) == 1
    s = subnets[0]
    assert s["CidrBlock"] == "172.31.0.0/20"
    assert s["AvailabilityZone"] == REGION + "a"
    assert s["MapPublicIpOnLaunch"] is True and s["DefaultForAz"] is True
    # /20: 4096 addresses, EC2 reserves five.
    assert s["AvailableIpAddressCount"] == 4091 - count_enis(ec2, s["SubnetId"])
    sg = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]},
                                               {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]
    assert len(sg) == 1
    g = sg[0]
    assert g["IpPermissions"] == [{"IpProtocol": "-1", "IpRanges": [], "Ipv6Ranges": [], "PrefixListIds": [],
                                   "UserIdGroupPairs": [{"GroupId": g["GroupId"], "UserId": g["OwnerId"]}]}]
    assert g["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    rt = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]},
                                            {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
    assert len(rt) == 1
    assert rt[0]["Routes"] == [{"DestinationCidrBlock": "172.31.0.0/16", "GatewayId": "local",
                                "Origin": "CreateRouteTable", "State": "active"}]
    acl = ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]},
                                             {"Name": "default", "Values": ["true"]}])["NetworkAcls"]
    assert len(acl) == 1 and acl[0]["IsDefault"]
    allow = [e for e in acl[0]["Entries"] if e["RuleAction"] == "allow"]
    assert {e["Egress"] for e in allow} == {True, False}
    assert all(e["CidrBlock"] == "0.0.0.0/0" and e["Protocol"] == "-1" for e in allow)
    assert [a["SubnetId"] for a in acl[0]["Associations"]] == [s["SubnetId"]]


def count_enis(ec2, subnet_id):
    return len(ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"])


def test_terraform_aws_vpc_and_aws_subnet(vireod, ec2):
    """What Terraform's aws_vpc and aws_subnet do: create, wait for available, read the
    attributes and the main route table, default ACL and default group, modify, delete."""
    v = ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "tf-vpc"}]}])["Vpc"]
    vid = v["VpcId"]
    assert vid.startswith("vpc-") and v["State"] == "available" and v["IsDefault"] is False
    assert v["Tags"] == [{"Key": "Name", "Value": "tf-vpc"}]
    ec2.get_waiter("vpc_available").wait(VpcIds=[vid])
    assert ec2.describe_vpc_attribute(VpcId=vid, Attribute="enableDnsSupport")["EnableDnsSupport"]["Value"] is True
    assert ec2.describe_vpc_attribute(VpcId=vid, Attribute="enableDnsHostnames")["EnableDnsHostnames"]["Value"] is False
    assert ec2.describe_vpc_attribute(VpcId=vid, Attribute="enableNetworkAddressUsageMetrics")[
        "EnableNetworkAddressUsageMetrics"]["Value"] is False
    ec2.modify_vpc_attribute(VpcId=vid, EnableDnsHostnames={"Value": True})
    assert ec2.describe_vpc_attribute(VpcId=vid, Attribute="enableDnsHostnames")["EnableDnsHostnames"]["Value"] is True
    # enableDnsSupport cannot go while host names need it.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_vpc_attribute(VpcId=vid, EnableDnsSupport={"Value": False})
    assert code(e) == "InvalidParameterValue"
    main = ec2.describe_route_tables(Filters=[{"Name": "association.main", "Values": ["true"]},
                                              {"Name": "vpc-id", "Values": [vid]}])["RouteTables"]
    assert len(main) == 1 and main[0]["Associations"][0]["Main"] is True
    assert ec2.describe_network_acls(Filters=[{"Name": "default", "Values": ["true"]},
                                              {"Name": "vpc-id", "Values": [vid]}])["NetworkAcls"]
    sg = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]},
                                               {"Name": "vpc-id", "Values": [vid]}])["SecurityGroups"]
    assert len(sg) == 1
    assert ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["tf-vpc"]}])["Vpcs"][0]["VpcId"] == vid
    assert ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.0.0.0/16"]}])["Vpcs"][0]["VpcId"] == vid

    s = ec2.create_subnet(VpcId=vid, CidrBlock="10.0.1.0/24", AvailabilityZone=REGION + "a", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": "tf-subnet"}]}])["Subnet"]
    sid = s["SubnetId"]
    assert sid.startswith("subnet-") and s["State"] == "available"
    assert s["AvailableIpAddressCount"] == 251
    assert s["MapPublicIpOnLaunch"] is False and s["DefaultForAz"] is False
    assert s["SubnetArn"].endswith(f":subnet/{sid}")
    assert s["PrivateDnsNameOptionsOnLaunch"]["HostnameType"] == "ip-name"
    ec2.get_waiter("subnet_available").wait(SubnetIds=[sid])
    ec2.modify_subnet_attribute(SubnetId=sid, MapPublicIpOnLaunch={"Value": True})
    got = ec2.describe_subnets(SubnetIds=[sid])["Subnets"][0]
    assert got["MapPublicIpOnLaunch"] is True and got["Tags"] == [{"Key": "Name", "Value": "tf-subnet"}]
    for f, val in [("vpc-id", vid), ("subnet-id", sid), ("cidr-block", "10.0.1.0/24"),
                   ("availability-zone", REGION + "a"), ("default-for-az", "false"), ("tag:Name", "tf-subnet")]:
        # With vpc-id: the default VPC's subnet is in the same zone.
        got = ec2.describe_subnets(Filters=[{"Name": f, "Values": [val]}, {"Name": "vpc-id", "Values": [vid]}])
        assert [x["SubnetId"] for x in got["Subnets"]] == [sid], f

    # A VPC with a subnet cannot go; the subnet can, then the VPC.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_vpc(VpcId=vid)
    assert code(e) == "DependencyViolation"
    ec2.delete_subnet(SubnetId=sid)
    ec2.delete_vpc(VpcId=vid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_vpcs(VpcIds=[vid])
    assert code(e) == "InvalidVpcID.NotFound"
    # What CreateVpc made went with it: no group, table, ACL or tag of it is left.
    assert not ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vid]}])["SecurityGroups"]
    assert not ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vid]}])["RouteTables"]
    assert not ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [vid]}])["NetworkAcls"]
    assert not ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [vid]}])["Tags"]


def test_bad_vpcs_and_subnets_get_ec2_errors_and_make_nothing(vireod, ec2):
    before = counts(vireod)
    for cidr, want in [("10.0.0.0/8", "InvalidVpc.Range"), ("10.0.0.0/29", "InvalidVpc.Range"),
                       ("10.0.1.0/16", "InvalidParameterValue"), ("banana", "InvalidParameterValue"),
                       ("10.0.0.0/33", "InvalidParameterValue")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.create_vpc(CidrBlock=cidr, TagSpecifications=[
                {"ResourceType": "vpc", "Tags": [{"Key": "k", "Value": "v"}]}])
        assert code(e) == want, cidr
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=[
            {"ResourceType": "subnet", "Tags": [{"Key": "k", "Value": "v"}]}])
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_vpc(CidrBlock="10.0.0.0/16", DryRun=True)
    assert code(e) == "DryRunOperation"
    assert counts(vireod) == before

    vid = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    sid = ec2.create_subnet(VpcId=vid, CidrBlock="10.9.0.0/20")["Subnet"]["SubnetId"]
    before = counts(vireod)
    for cidr, want in [("10.10.0.0/24", "InvalidSubnet.Range"),      # outside the VPC
                       ("10.9.0.0/15", "InvalidParameterValue"),     # not aligned
                       ("10.8.0.0/15", "InvalidSubnet.Range"),       # bigger than /16
                       ("10.9.15.0/24", "InvalidSubnet.Conflict"),   # inside 10.9.0.0/20
                       ("10.9.0.0/16", "InvalidSubnet.Conflict"),    # around it
                       ("10.9.16.0/29", "InvalidSubnet.Range")]:     # smaller than /28
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.create_subnet(VpcId=vid, CidrBlock=cidr)
        assert code(e) == want, cidr
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_subnet(VpcId=vid, CidrBlock="10.9.16.0/24", AvailabilityZone="us-east-1a")
    assert code(e) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_subnet(VpcId="vpc-0123456789abcdef0", CidrBlock="10.9.16.0/24")
    assert code(e) == "InvalidVpcID.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_subnet(VpcId="vpc-nope", CidrBlock="10.9.16.0/24")
    assert code(e) == "InvalidVpcID.Malformed"
    assert counts(vireod) == before
    for call, want in [(lambda: ec2.delete_subnet(SubnetId="subnet-0123456789abcdef0"), "InvalidSubnetID.NotFound"),
                       (lambda: ec2.delete_vpc(VpcId="vpc-0123456789abcdef0"), "InvalidVpcID.NotFound"),
                       (lambda: ec2.describe_subnets(SubnetIds=["subnet-0123456789abcdef0"]), "InvalidSubnetID.NotFound"),
                       (lambda: ec2.describe_vpcs(Filters=[{"Name": "nonsense", "Values": ["x"]}]), "InvalidParameterValue"),
                       (lambda: ec2.describe_vpc_attribute(VpcId=vid, Attribute="colour"), "InvalidParameterValue")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e) == want
    ec2.delete_subnet(SubnetId=sid)
    ec2.delete_vpc(VpcId=vid)


def test_describe_vpcs_pages(vireod, ec2):
    made = [ec2.create_vpc(CidrBlock=f"10.{50 + n}.0.0/16")["Vpc"]["VpcId"] for n in range(6)]
    seen, token = [], None
    while True:
        kw = {"MaxResults": 5}
        if token:
            kw["NextToken"] = token
        page = ec2.describe_vpcs(**kw)
        assert len(page["Vpcs"]) <= 5
        seen += [v["VpcId"] for v in page["Vpcs"]]
        token = page.get("NextToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)
    for v in made:
        ec2.delete_vpc(VpcId=v)


def test_terraform_internet_gateway_and_route_table(vireod, ec2):
    """aws_internet_gateway, aws_route_table, aws_route and aws_route_table_association."""
    vid = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    sid = ec2.create_subnet(VpcId=vid, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway(TagSpecifications=[
        {"ResourceType": "internet-gateway", "Tags": [{"Key": "Name", "Value": "tf-igw"}]}])["InternetGateway"]
    gid = igw["InternetGatewayId"]
    assert gid.startswith("igw-") and igw["Attachments"] == []
    ec2.attach_internet_gateway(InternetGatewayId=gid, VpcId=vid)
    got = ec2.describe_internet_gateways(InternetGatewayIds=[gid])["InternetGateways"][0]
    assert got["Attachments"] == [{"State": "available", "VpcId": vid}]
    assert got["Tags"] == [{"Key": "Name", "Value": "tf-igw"}]
    assert ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vid]}])[
        "InternetGateways"][0]["InternetGatewayId"] == gid
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.attach_internet_gateway(InternetGatewayId=gid, VpcId=vid)
    assert code(e) == "Resource.AlreadyAssociated"

    rt = ec2.create_route_table(VpcId=vid, TagSpecifications=[
        {"ResourceType": "route-table", "Tags": [{"Key": "Name", "Value": "tf-rt"}]}])["RouteTable"]
    rid = rt["RouteTableId"]
    assert rid.startswith("rtb-") and rt["Associations"] == []
    assert rt["Routes"] == [{"DestinationCidrBlock": "10.1.0.0/16", "GatewayId": "local",
                             "Origin": "CreateRouteTable", "State": "active"}]
    assert ec2.create_route(RouteTableId=rid, DestinationCidrBlock="0.0.0.0/0", GatewayId=gid)["Return"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_route(RouteTableId=rid, DestinationCidrBlock="0.0.0.0/0", GatewayId=gid)
    assert code(e) == "RouteAlreadyExists"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_route(RouteTableId=rid, DestinationCidrBlock="10.1.5.0/24", GatewayId=gid)
    assert code(e) == "InvalidParameterValue"
    assoc = ec2.associate_route_table(RouteTableId=rid, SubnetId=sid)
    aid = assoc["AssociationId"]
    assert aid.startswith("rtbassoc-") and assoc["AssociationState"]["State"] == "associated"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.associate_route_table(RouteTableId=rid, SubnetId=sid)
    assert code(e) == "Resource.AlreadyAssociated"
    got = ec2.describe_route_tables(RouteTableIds=[rid])["RouteTables"][0]
    assert {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": gid, "Origin": "CreateRoute",
            "State": "active"} in got["Routes"]
    assert got["Associations"][0]["SubnetId"] == sid and got["Associations"][0]["Main"] is False
    assert ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [sid]}])[
        "RouteTables"][0]["RouteTableId"] == rid
    # In use: neither the table nor the gateway can go.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_route_table(RouteTableId=rid)
    assert code(e) == "DependencyViolation"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_internet_gateway(InternetGatewayId=gid)
    assert code(e) == "DependencyViolation"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_vpc(VpcId=vid)
    assert code(e) == "DependencyViolation"
    # The main association cannot be removed; a route to a detached gateway is a blackhole.
    main_assoc = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vid]},
                                                    {"Name": "association.main", "Values": ["true"]}])[
        "RouteTables"][0]["Associations"][0]["RouteTableAssociationId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.disassociate_route_table(AssociationId=main_assoc)
    assert code(e) == "InvalidParameterValue"
    ec2.detach_internet_gateway(InternetGatewayId=gid, VpcId=vid)
    routes = ec2.describe_route_tables(RouteTableIds=[rid])["RouteTables"][0]["Routes"]
    assert [r["State"] for r in routes if r["DestinationCidrBlock"] == "0.0.0.0/0"] == ["blackhole"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.detach_internet_gateway(InternetGatewayId=gid, VpcId=vid)
    assert code(e) == "Gateway.NotAttached"
    # Terraform's destroy order.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_route(RouteTableId=rid, DestinationCidrBlock="10.1.0.0/16")
    assert code(e) == "InvalidParameterValue"
    ec2.delete_route(RouteTableId=rid, DestinationCidrBlock="0.0.0.0/0")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_route(RouteTableId=rid, DestinationCidrBlock="0.0.0.0/0")
    assert code(e) == "InvalidRoute.NotFound"
    ec2.disassociate_route_table(AssociationId=aid)
    ec2.delete_route_table(RouteTableId=rid)
    ec2.delete_internet_gateway(InternetGatewayId=gid)
    ec2.delete_subnet(SubnetId=sid)
    ec2.delete_vpc(VpcId=vid)
    for call, want in [(lambda: ec2.describe_route_tables(RouteTableIds=[rid]), "InvalidRouteTableID.NotFound"),
                       (lambda: ec2.describe_internet_gateways(InternetGatewayIds=[gid]), "InvalidInternetGatewayID.NotFound"),
                       (lambda: ec2.delete_internet_gateway(InternetGatewayId="igw-zz"), "InvalidInternetGatewayID.Malformed")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e) == want


def test_tags_on_network_resources(vireod, ec2):
    vid = ec2.create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    gid = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.create_tags(Resources=[vid, gid], Tags=[{"Key": "team", "Value": "net"}])
    tags = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]
    assert {(t["ResourceId"], t["ResourceType"]) for t in tags} == {(vid, "vpc"), (gid, "internet-gateway")}
    assert ec2.describe_vpcs(Filters=[{"Name": "tag-key", "Values": ["team"]}])["Vpcs"][0]["VpcId"] == vid
    # All or nothing: one unknown resource and no tag is set.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_tags(Resources=[vid, "subnet-0123456789abcdef0"], Tags=[{"Key": "other", "Value": "x"}])
    assert code(e) == "InvalidSubnetID.NotFound"
    assert not ec2.describe_tags(Filters=[{"Name": "key", "Values": ["other"]}])["Tags"]
    ec2.delete_tags(Resources=[vid], Tags=[{"Key": "team"}])
    assert [t["ResourceId"] for t in ec2.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]] == [gid]
    ec2.delete_internet_gateway(InternetGatewayId=gid)
    ec2.delete_vpc(VpcId=vid)
    assert not ec2.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]


def test_aws_cli_makes_a_vpc(vireod):
    def cli(*args, ok=True):
        return aws_cli(vireod, *args, ok=ok)

    vid = cli("create-vpc", "--cidr-block", "10.3.0.0/16")["Vpc"]["VpcId"]
    cli("modify-vpc-attribute", "--vpc-id", vid, "--enable-dns-hostnames", "{\"Value\":true}")
    sid = cli("create-subnet", "--vpc-id", vid, "--cidr-block", "10.3.0.0/28")["Subnet"]["SubnetId"]
    assert cli("describe-subnets", "--subnet-ids", sid)["Subnets"][0]["AvailableIpAddressCount"] == 11
    gid = cli("create-internet-gateway")["InternetGateway"]["InternetGatewayId"]
    cli("attach-internet-gateway", "--internet-gateway-id", gid, "--vpc-id", vid)
    rid = cli("describe-route-tables", "--filters", f"Name=vpc-id,Values={vid}")["RouteTables"][0]["RouteTableId"]
    cli("create-route", "--route-table-id", rid, "--destination-cidr-block", "0.0.0.0/0", "--gateway-id", gid)
    bad = cli("create-subnet", "--vpc-id", vid, "--cidr-block", "10.3.0.0/24", ok=False)
    assert bad.returncode != 0 and "InvalidSubnet.Conflict" in bad.stderr
    cli("delete-route", "--route-table-id", rid, "--destination-cidr-block", "0.0.0.0/0")
    cli("detach-internet-gateway", "--internet-gateway-id", gid, "--vpc-id", vid)
    cli("delete-internet-gateway", "--internet-gateway-id", gid)
    cli("delete-subnet", "--subnet-id", sid)
    cli("delete-vpc", "--vpc-id", vid)


def test_terraform_replaces_routes_and_associations(vireod, ec2):
    """aws_route's update (ReplaceRoute), aws_route_table_association's update and
    aws_main_route_table_association (ReplaceRouteTableAssociation), with EC2's errors and
    nothing changed."""
    vid = ec2.create_vpc(CidrBlock="10.3.0.0/16")["Vpc"]["VpcId"]
    sid = ec2.create_subnet(VpcId=vid, CidrBlock="10.3.1.0/24")["Subnet"]["SubnetId"]
    gw1, gw2 = [ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"] for _ in range(2)]
    ec2.attach_internet_gateway(InternetGatewayId=gw1, VpcId=vid)
    rt1 = ec2.create_route_table(VpcId=vid)["RouteTable"]["RouteTableId"]
    rt2 = ec2.create_route_table(VpcId=vid)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=rt1, DestinationCidrBlock="0.0.0.0/0", GatewayId=gw1)

    def routes(rt):
        return {r["DestinationCidrBlock"]: (r["GatewayId"], r["State"])
                for r in ec2.describe_route_tables(RouteTableIds=[rt])["RouteTables"][0]["Routes"]}

    # ReplaceRoute: to another gateway once it is attached to the VPC.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.replace_route(RouteTableId=rt1, DestinationCidrBlock="0.0.0.0/0", GatewayId=gw2)
    assert code(e) == "InvalidParameterValue"
    ec2.detach_internet_gateway(InternetGatewayId=gw1, VpcId=vid)
    ec2.attach_internet_gateway(InternetGatewayId=gw2, VpcId=vid)
    assert routes(rt1)["0.0.0.0/0"] == (gw1, "blackhole")
    # (boto3's ReplaceRoute output has no fields; vireod answers return=true as EC2 does.)
    ec2.replace_route(RouteTableId=rt1, DestinationCidrBlock="0.0.0.0/0", GatewayId=gw2)
    assert routes(rt1)["0.0.0.0/0"] == (gw2, "active")
    before = counts(vireod)
    for kw, want in [
        ({"RouteTableId": rt1, "DestinationCidrBlock": "192.168.0.0/16", "GatewayId": gw2}, "InvalidRoute.NotFound"),
        ({"RouteTableId": rt1, "DestinationCidrBlock": "10.3.0.0/16", "GatewayId": gw2}, "InvalidParameterValue"),
        ({"RouteTableId": rt1, "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-0123456789abcdef0"},
         "InvalidInternetGatewayID.NotFound"),
        ({"RouteTableId": rt1, "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-zz"},
         "InvalidInternetGatewayID.Malformed"),
        ({"RouteTableId": rt1, "DestinationCidrBlock": "0.0.0.0/99", "GatewayId": gw2}, "InvalidParameterValue"),
        ({"RouteTableId": "rtb-0123456789abcdef0", "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": gw2},
         "InvalidRouteTableID.NotFound"),
        ({"RouteTableId": rt1, "DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-0123456789abcdef0"},
         "UnsupportedOperation"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.replace_route(**kw)
        assert code(e) == want, kw
    assert routes(rt1)["0.0.0.0/0"] == (gw2, "active")
    assert counts(vireod) == before

    # ReplaceRouteTableAssociation of a subnet: a new association id, the old one gone.
    a1 = ec2.associate_route_table(RouteTableId=rt1, SubnetId=sid)["AssociationId"]
    out = ec2.replace_route_table_association(AssociationId=a1, RouteTableId=rt2)
    a2 = out["NewAssociationId"]
    assert a2.startswith("rtbassoc-") and a2 != a1 and out["AssociationState"]["State"] == "associated"
    got = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [sid]}])["RouteTables"]
    assert [t["RouteTableId"] for t in got] == [rt2]
    assert got[0]["Associations"][0]["RouteTableAssociationId"] == a2
    assert ec2.describe_route_tables(RouteTableIds=[rt1])["RouteTables"][0]["Associations"] == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.disassociate_route_table(AssociationId=a1)
    assert code(e) == "InvalidAssociationID.NotFound"

    # aws_main_route_table_association: the VPC's main association moves to rt1, and back.
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vid]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    main_rt, main_assoc = main["RouteTableId"], main["Associations"][0]["RouteTableAssociationId"]
    m2 = ec2.replace_route_table_association(AssociationId=main_assoc, RouteTableId=rt1)["NewAssociationId"]
    now = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vid]},
                                             {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
    assert [t["RouteTableId"] for t in now] == [rt1]
    assert now[0]["Associations"] == [{"Main": True, "RouteTableAssociationId": m2, "RouteTableId": rt1,
                                       "AssociationState": {"State": "associated"}}]
    # The old main table has no association now, so it can be deleted; Terraform puts it back.
    m3 = ec2.replace_route_table_association(AssociationId=m2, RouteTableId=main_rt)["NewAssociationId"]

    # Bad input changes nothing.
    other_vpc = ec2.create_vpc(CidrBlock="10.4.0.0/16")["Vpc"]["VpcId"]
    foreign = ec2.create_route_table(VpcId=other_vpc)["RouteTable"]["RouteTableId"]
    before = counts(vireod)
    for kw, want in [
        ({"AssociationId": "rtbassoc-0123456789abcdef0", "RouteTableId": rt1}, "InvalidAssociationID.NotFound"),
        ({"AssociationId": "rtbassoc-zz", "RouteTableId": rt1}, "InvalidID"),
        ({"AssociationId": a2, "RouteTableId": "rtb-0123456789abcdef0"}, "InvalidRouteTableID.NotFound"),
        ({"AssociationId": a2, "RouteTableId": foreign}, "InvalidParameterValue"),
        ({"AssociationId": m3, "RouteTableId": foreign}, "InvalidParameterValue"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.replace_route_table_association(**kw)
        assert code(e) == want, kw
    assert counts(vireod) == before
    got = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vid]}])["RouteTables"]
    assocs = {a["RouteTableAssociationId"]: (t["RouteTableId"], a.get("SubnetId"))
              for t in got for a in t["Associations"]}
    assert assocs == {a2: (rt2, sid), m3: (main_rt, None)}

    ec2.disassociate_route_table(AssociationId=a2)
    for rt in (rt1, rt2, foreign):
        ec2.delete_route_table(RouteTableId=rt)
    ec2.detach_internet_gateway(InternetGatewayId=gw2, VpcId=vid)
    for g in (gw1, gw2):
        ec2.delete_internet_gateway(InternetGatewayId=g)
    ec2.delete_subnet(SubnetId=sid)
    ec2.delete_vpc(VpcId=vid)
    ec2.delete_vpc(VpcId=other_vpc)
