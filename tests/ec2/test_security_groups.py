"""boto3 drives vireod's security groups: the calls Terraform's aws_security_group and its rule
resources (aws_vpc_security_group_ingress_rule / _egress_rule) make, both forms of Authorize and
Revoke, DescribeSecurityGroupRules, and EC2's errors with nothing changed."""

import os
import sqlite3

import botocore.exceptions
import pytest


def code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def rule_count(vireod):
    db = sqlite3.connect(os.path.join(vireod.data, "state.db"))
    try:
        return db.execute("SELECT COUNT(*) FROM sg_rules").fetchone()[0] + \
            db.execute("SELECT COUNT(*) FROM security_groups").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def vpc(ec2):
    vid = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    yield vid


def test_terraform_aws_security_group(vireod, ec2, vpc):
    """Create, read, revoke the default egress (Terraform does, and fails if it is missing),
    authorize its own rules, read them back as IpPermissions, delete."""
    r = ec2.create_security_group(GroupName="tf-web", Description="web servers", VpcId=vpc, TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": "tf-web"}]}])
    gid = r["GroupId"]
    assert gid.startswith("sg-") and r["Tags"] == [{"Key": "Name", "Value": "tf-web"}]
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert g["GroupName"] == "tf-web" and g["Description"] == "web servers" and g["VpcId"] == vpc
    assert g["IpPermissions"] == []
    assert g["IpPermissionsEgress"] == [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                                         "Ipv6Ranges": [], "PrefixListIds": [], "UserIdGroupPairs": []}]
    ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "-1", "FromPort": 0, "ToPort": 0, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissionsEgress"] == []
    other = ec2.create_security_group(GroupName="tf-lb", Description="lb", VpcId=vpc)["GroupId"]
    out = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "internal"}, {"CidrIp": "192.168.0.0/16"}]},
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "UserIdGroupPairs": [{"GroupId": other}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ])
    assert out["Return"] is True
    rules = out["SecurityGroupRules"]
    assert len(rules) == 4 and all(x["SecurityGroupRuleId"].startswith("sgr-") for x in rules)
    assert {(x["IpProtocol"], x["FromPort"], x["ToPort"], x.get("CidrIpv4"),
             x.get("ReferencedGroupInfo", {}).get("GroupId")) for x in rules} == {
        ("tcp", 80, 80, "10.0.0.0/8", None), ("tcp", 80, 80, "192.168.0.0/16", None),
        ("tcp", 443, 443, None, other), ("icmp", 8, -1, "0.0.0.0/0", None)}
    assert all(x["IsEgress"] is False and x["GroupId"] == gid for x in rules)
    ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.20.0.2/32"}]}])
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in g["IpPermissions"]}
    assert perms[("tcp", 80, 80)]["IpRanges"] == [{"CidrIp": "10.0.0.0/8", "Description": "internal"},
                                                  {"CidrIp": "192.168.0.0/16"}]
    assert perms[("tcp", 443, 443)]["UserIdGroupPairs"][0]["GroupId"] == other
    assert perms[("icmp", 8, -1)]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    assert g["IpPermissionsEgress"][0]["IpProtocol"] == "udp"
    # Filters on rules.
    found = ec2.describe_security_groups(Filters=[{"Name": "ip-permission.from-port", "Values": ["443"]}])
    assert [x["GroupId"] for x in found["SecurityGroups"]] == [gid]
    found = ec2.describe_security_groups(Filters=[{"Name": "egress.ip-permission.cidr", "Values": ["10.20.0.2/32"]}])
    assert [x["GroupId"] for x in found["SecurityGroups"]] == [gid]
    # A group that other rules refer to cannot go.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_security_group(GroupId=other)
    assert code(e) == "DependencyViolation"
    ec2.delete_security_group(GroupId=gid)
    ec2.delete_security_group(GroupId=other)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_security_groups(GroupIds=[gid])
    assert code(e) == "InvalidGroup.NotFound"


def test_terraform_vpc_security_group_rule_resources(vireod, ec2, vpc):
    """aws_vpc_security_group_ingress_rule: one permission per Authorize, the rule id from its
    answer, DescribeSecurityGroupRules by id, Revoke by SecurityGroupRuleId."""
    gid = ec2.create_security_group(GroupName="tf-rules", Description="rules", VpcId=vpc)["GroupId"]
    out = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
        TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": [{"Key": "Name", "Value": "ssh"}]}])
    rid = out["SecurityGroupRules"][0]["SecurityGroupRuleId"]
    got = ec2.describe_security_group_rules(SecurityGroupRuleIds=[rid])["SecurityGroupRules"]
    assert len(got) == 1
    x = got[0]
    assert (x["GroupId"], x["IsEgress"], x["IpProtocol"], x["FromPort"], x["ToPort"], x["CidrIpv4"]) == \
        (gid, False, "tcp", 22, 22, "10.0.0.0/8")
    assert x["Tags"] == [{"Key": "Name", "Value": "ssh"}]
    assert x["GroupOwnerId"] and x["SecurityGroupRuleArn"].endswith(rid)
    by_group = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
    assert {y["SecurityGroupRuleId"] for y in by_group} >= {rid}
    assert any(y["IsEgress"] for y in by_group), "the default egress rule is listed"
    # Revoking an ingress rule id through Egress is not found; through Ingress it goes.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.revoke_security_group_egress(GroupId=gid, SecurityGroupRuleIds=[rid])
    assert code(e) == "InvalidSecurityGroupRuleId.NotFound"
    out = ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[rid])
    assert out["Return"] is True
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_security_group_rules(SecurityGroupRuleIds=[rid])
    assert code(e) == "InvalidSecurityGroupRuleId.NotFound"
    ec2.delete_security_group(GroupId=gid)


def test_bad_rules_get_ec2_errors_and_change_nothing(vireod, ec2, vpc):
    gid = ec2.create_security_group(GroupName="bad-rules", Description="x", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    before = rule_count(vireod)
    cases = [
        # a duplicate, also when a new rule comes with it: nothing is added
        ([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
           "IpRanges": [{"CidrIp": "1.2.3.0/24"}, {"CidrIp": "10.0.0.0/8"}]}], "InvalidPermission.Duplicate"),
        # twice in one request
        ([{"IpProtocol": "udp", "FromPort": 1, "ToPort": 2,
           "IpRanges": [{"CidrIp": "1.2.3.0/24"}, {"CidrIp": "1.2.3.0/24"}]}], "InvalidPermission.Duplicate"),
        ([{"IpProtocol": "tcp", "FromPort": 90, "ToPort": 80, "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}],
         "InvalidParameterValue"),
        ([{"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}], "InvalidParameterValue"),
        ([{"IpProtocol": "bogus", "FromPort": 1, "ToPort": 1, "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}],
         "InvalidParameterValue"),
        ([{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "IpRanges": [{"CidrIp": "1.2.3.4/24"}]}],
         "InvalidParameterValue"),
        ([{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1,
           "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]}], "InvalidGroup.NotFound"),
    ]
    for perms, want in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=perms)
        assert code(e) == want, perms
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 23, "ToPort": 23, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    assert code(e) == "InvalidPermission.NotFound"
    # Revoke is all or nothing too: the existing rule stays when another one is missing.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "10.0.0.0/8"}, {"CidrIp": "9.9.9.0/24"}]}])
    assert code(e) == "InvalidPermission.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId="sg-0123456789abcdef0", IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}])
    assert code(e) == "InvalidGroup.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId="sg-nope", IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}])
    assert code(e) == "InvalidGroupId.Malformed"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, DryRun=True, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}])
    assert code(e) == "DryRunOperation"
    for name, want in [("bad-rules", "InvalidGroup.Duplicate"), ("default", "InvalidGroup.Reserved"),
                       ("sg-named", "InvalidParameterValue")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.create_security_group(GroupName=name, Description="x", VpcId=vpc)
        assert code(e) == want, name
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_security_group(GroupName="nowhere", Description="x", VpcId="vpc-0123456789abcdef0")
    assert code(e) == "InvalidVpcID.NotFound"
    assert rule_count(vireod) == before
    # The numbers EC2 takes for protocols are its names.
    out = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "6", "FromPort": 8080, "ToPort": 8081, "IpRanges": [{"CidrIp": "1.2.3.0/24"}]},
        {"IpProtocol": "47", "IpRanges": [{"CidrIp": "1.2.3.0/24"}]}])
    assert [x["IpProtocol"] for x in out["SecurityGroupRules"]] == ["tcp", "47"]
    # The older top-level form.
    ec2.authorize_security_group_ingress(GroupId=gid, IpProtocol="udp", FromPort=500, ToPort=500, CidrIp="5.5.5.0/24")
    ec2.revoke_security_group_ingress(GroupId=gid, IpProtocol="udp", FromPort=500, ToPort=500, CidrIp="5.5.5.0/24")
    ec2.delete_security_group(GroupId=gid)


def test_the_default_group_cannot_be_deleted(vireod, ec2, vpc):
    d = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                              {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.delete_security_group(GroupId=d["GroupId"])
    assert code(e) == "CannotDelete"
    # A group of the default VPC by name.
    g = ec2.create_security_group(GroupName="by-name", Description="x")["GroupId"]
    dv = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    assert ec2.describe_security_groups(GroupNames=["by-name"])["SecurityGroups"][0]["VpcId"] == dv
    ec2.authorize_security_group_ingress(GroupName="by-name", IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "IpRanges": [{"CidrIp": "1.0.0.0/8"}]}])
    ec2.delete_security_group(GroupName="by-name")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_security_groups(GroupIds=[g])
    assert code(e) == "InvalidGroup.NotFound"


def rules_of(ec2, gid):
    return {x["SecurityGroupRuleId"]: x for x in
            ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]}


def test_terraform_modifies_a_rule_in_place(vireod, ec2, vpc):
    """aws_vpc_security_group_ingress_rule's update: ModifySecurityGroupRules keeps the rule id and
    tags; a rule that would duplicate another, an unknown rule id or bad ports change nothing."""
    gid = ec2.create_security_group(GroupName="tf-modify", Description="m", VpcId=vpc)["GroupId"]
    peer = ec2.create_security_group(GroupName="tf-modify-peer", Description="p", VpcId=vpc)["GroupId"]
    out = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
        TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": [{"Key": "Name", "Value": "r"}]}])
    ssh, web = [x["SecurityGroupRuleId"] for x in out["SecurityGroupRules"]]
    r = ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[
        {"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 2222, "ToPort": 2223, "CidrIpv4": "192.168.0.0/16",
            "Description": "moved"}}])
    assert r["Return"] is True
    x = rules_of(ec2, gid)[ssh]
    assert (x["IpProtocol"], x["FromPort"], x["ToPort"], x["CidrIpv4"], x["Description"], x["IsEgress"]) == \
        ("tcp", 2222, 2223, "192.168.0.0/16", "moved", False)
    assert x["Tags"] == [{"Key": "Name", "Value": "r"}]
    # From a CIDR to a referenced group, and the group's view follows.
    ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[
        {"SecurityGroupRuleId": web, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "ReferencedGroupId": peer}}])
    x = rules_of(ec2, gid)[web]
    assert x["ReferencedGroupInfo"]["GroupId"] == peer and "CidrIpv4" not in x
    g = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    perms = {(p["IpProtocol"], p.get("FromPort")): p for p in g["IpPermissions"]}
    assert perms[("tcp", 80)]["UserIdGroupPairs"][0]["GroupId"] == peer
    assert perms[("tcp", 2222)]["IpRanges"] == [{"CidrIp": "192.168.0.0/16", "Description": "moved"}]
    # The egress rule a new group has is modified the same way.
    egress = [k for k, v in rules_of(ec2, gid).items() if v["IsEgress"]][0]
    ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[
        {"SecurityGroupRuleId": egress, "SecurityGroupRule": {"IpProtocol": "udp", "FromPort": 53,
                                                              "ToPort": 53, "CidrIpv4": "10.20.0.2/32"}}])
    assert rules_of(ec2, gid)[egress]["IpProtocol"] == "udp"
    before = rules_of(ec2, gid)
    bad = [
        # the same as the other ingress rule
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "ReferencedGroupId": peer}}],
         "InvalidPermission.Duplicate"),
        # two rules made the same in one call
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}},
          {"SecurityGroupRuleId": web, "SecurityGroupRule": {
              "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}],
         "InvalidPermission.Duplicate"),
        # an unknown rule id, also after a good one
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 5, "ToPort": 5, "CidrIpv4": "1.0.0.0/8"}},
          {"SecurityGroupRuleId": "sgr-0123456789abcdef0", "SecurityGroupRule": {
              "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}],
         "InvalidSecurityGroupRuleId.NotFound"),
        ([{"SecurityGroupRuleId": "sgr-nope", "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}],
         "InvalidSecurityGroupRuleId.Malformed"),
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 9, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}], "InvalidParameterValue"),
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.1/8"}}], "InvalidParameterValue"),
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1}}], "MissingParameter"),
        ([{"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
            "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "ReferencedGroupId": "sg-0123456789abcdef0"}}],
         "InvalidGroup.NotFound"),
    ]
    for rules, want in bad:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=rules)
        assert code(e) == want, rules
    # A rule id of another group is not found in this one.
    other_rule = next(iter(rules_of(ec2, peer)))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[
            {"SecurityGroupRuleId": other_rule, "SecurityGroupRule": {
                "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}])
    assert code(e) == "InvalidSecurityGroupRuleId.NotFound"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_security_group_rules(GroupId="sg-0123456789abcdef0", SecurityGroupRules=[
            {"SecurityGroupRuleId": ssh, "SecurityGroupRule": {
                "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIpv4": "1.0.0.0/8"}}])
    assert code(e) == "InvalidGroup.NotFound"
    assert rules_of(ec2, gid) == before
    ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[ssh, web])
    ec2.delete_security_group(GroupId=gid)
    ec2.delete_security_group(GroupId=peer)


def test_rule_descriptions_are_updated(vireod, ec2, vpc):
    gid = ec2.create_security_group(GroupName="descr", Description="d", VpcId=vpc)["GroupId"]
    rid = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])[
        "SecurityGroupRules"][0]["SecurityGroupRuleId"]
    assert ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh from inside"}]}])["Return"] is True
    assert rules_of(ec2, gid)[rid]["Description"] == "ssh from inside"
    ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, SecurityGroupRuleDescriptions=[
        {"SecurityGroupRuleId": rid, "Description": "by id"}])
    assert rules_of(ec2, gid)[rid]["Description"] == "by id"
    egress = [k for k, v in rules_of(ec2, gid).items() if v["IsEgress"]][0]
    ec2.update_security_group_rule_descriptions_egress(GroupId=gid, SecurityGroupRuleDescriptions=[
        {"SecurityGroupRuleId": egress, "Description": "out"}])
    assert rules_of(ec2, gid)[egress]["Description"] == "out"
    before = rules_of(ec2, gid)
    for call, want in [
        (lambda: ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 23, "ToPort": 23,
             "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "x"}]}]), "InvalidPermission.NotFound"),
        # an ingress rule id through Egress, after a good pair: nothing changes
        (lambda: ec2.update_security_group_rule_descriptions_egress(GroupId=gid, SecurityGroupRuleDescriptions=[
            {"SecurityGroupRuleId": egress, "Description": "changed"},
            {"SecurityGroupRuleId": rid, "Description": "x"}]), "InvalidSecurityGroupRuleId.NotFound"),
        (lambda: ec2.update_security_group_rule_descriptions_ingress(GroupId=gid), "MissingParameter"),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e) == want
    assert rules_of(ec2, gid) == before
    ec2.delete_security_group(GroupId=gid)


def test_the_vireo_cli_makes_a_network_against_vireod(vireod, ec2):
    """`vireo vpc create`, `subnet create --public`, `sg create/allow/show/revoke`, `vpcs`,
    `subnets`, and an EC2 error as one line with status 1, against the real vireod."""
    import json
    import subprocess

    from conftest import VIREO

    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=os.path.join(vireod.data, "credentials"),
               AWS_CONFIG_FILE=os.path.join(vireod.data, "config"), VIREO_ENDPOINT=vireod.endpoint)

    def vireo(*args):
        return subprocess.run([VIREO, *args], capture_output=True, text=True, env=env, timeout=60)

    out = vireo("vpc", "create", "10.77.0.0/16", "--name", "cli-lab")
    assert out.returncode == 0, out.stderr
    vid = out.stdout.strip()
    assert vid.startswith("vpc-")
    out = vireo("--json", "subnet", "create", vid, "10.77.1.0/24", "--public", "--name", "cli-sub")
    assert out.returncode == 0, out.stderr
    sid = json.loads(out.stdout)["subnet_id"]
    s = ec2.describe_subnets(SubnetIds=[sid])["Subnets"][0]
    assert s["MapPublicIpOnLaunch"] is True and s["VpcId"] == vid
    rows = [line.split() for line in vireo("vpcs").stdout.splitlines()]
    assert [vid, "10.77.0.0/16", "no", "1", "cli-lab"] in rows
    subnets = vireo("subnets", "--vpc", vid).stdout.splitlines()
    assert len(subnets) == 2 and subnets[1].split()[:3] == [sid, vid, "10.77.1.0/24"]
    gid = vireo("sg", "create", "cli-web", "--vpc", vid).stdout.strip()
    assert gid.startswith("sg-")
    out = vireo("sg", "allow", gid, "--proto", "tcp", "--port", "22-23", "--cidr", "10.0.0.0/8",
                "--description", "ssh")
    assert out.returncode == 0, out.stderr
    rid = [w for w in out.stdout.split() if w.startswith("sgr-")][0]
    show = vireo("sg", "show", gid)
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert lines[0] == f"{gid}  cli-web"
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["DIRECTION", "PROTOCOL", "PORTS", "SOURCE/DESTINATION", "RULE", "DESCRIPTION"]
    assert table[1].split() == ["ingress", "tcp", "22-23", "10.0.0.0/8", rid, "ssh"]
    assert table[2].split()[:4] == ["egress", "all", "all", "0.0.0.0/0"]
    # The same rule again: EC2's error on one line, status 1, nothing added.
    dup = vireo("sg", "allow", gid, "--proto", "tcp", "--port", "22-23", "--cidr", "10.0.0.0/8")
    assert dup.returncode == 1 and dup.stderr.startswith("vireo: InvalidPermission.Duplicate: ")
    assert len(dup.stderr.splitlines()) == 1
    assert vireo("sg", "revoke", gid, "--rule", rid).stdout == f"{rid}  revoked\n"
    assert vireo("sg", "revoke", gid, "--egress", "--proto", "all", "--cidr", "0.0.0.0/0").returncode == 0
    assert ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"] == []
    assert vireo("sg", "delete", gid).returncode == 0
    assert vireo("subnet", "delete", sid).returncode == 0
    assert vireo("vpc", "delete", vid).stdout == f"{vid}  deleted\n"
