"""vireod drives the VPC data plane on this host (docs/networking.md): an instance's VPC gets
its network namespace, the instance's interface a TAP there that its VMM holds, its groups'
rules an nftables chain, its MAC and address a dnsmasq host line; a rule change reaches the
ruleset within a second; terminate and DeleteVpc leave nothing; a restarted vireod rebuilds a
namespace deleted while it was down. Root only (the whole suite runs as root); every namespace
and process is removed at the end, also when a test fails (`vireod remove-hosts`)."""

import hashlib
import ipaddress
import os
import signal
import subprocess
import time

import pytest

from conftest import VIREO, VIREOD, Vireod, image_id, instance, wait_state

POOL = "198.51.100.16/28"


def tag(data):
    return hashlib.sha256(os.path.abspath(data).encode()).hexdigest()[:4]


def vpc_ns(v, vpc):
    return f"vireo-{tag(v.data)}-{vpc}-h0"


def tap_name(eni):
    return "vt" + hashlib.sha256(b"tap\0" + eni.encode() + b"\0").hexdigest()[:10]


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def has_link(ns, name):
    return subprocess.run(["ip", "-n", ns, "link", "show", "dev", name], capture_output=True).returncode == 0


def ruleset(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def dnsmasqs(data):
    """PIDs of dnsmasq processes serving this data directory's VPCs."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and os.path.basename(cmd[0]) == b"dnsmasq" and any(data.encode() in a for a in cmd):
            pids.append(int(p))
    return pids


def wait_for(what, check, timeout=10.0):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(0.05)


OUTSIDE = f"vireo-test-out-{os.getpid()}"


@pytest.fixture(scope="module")
def vireod():
    # A namespace standing for the internet, joined to the edge by vireod (--uplink-netns).
    subprocess.run(["ip", "netns", "add", OUTSIDE], check=True)
    try:
        v = Vireod("--public-cidr", POOL, "--uplink-netns", OUTSIDE, "--migration-hosts", "1")
        try:
            yield v
        finally:
            v.close()
    finally:
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True)
    # Nothing of this vireod's data plane is left (remove-hosts in close() removed it).
    left = [n for n in namespaces() if n.startswith(f"vireo-{tag(v.data)}-")]
    assert not left, left
    assert not dnsmasqs(v.data)


def test_an_instance_gets_its_network_and_loses_it(vireod):
    v = vireod
    ec2 = v.client()
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1, SubnetId=subnet,
                            SecurityGroupIds=[sg])["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "running")
    eni = instance(ec2, iid)["NetworkInterfaces"][0]
    eni_id, mac, ip = eni["NetworkInterfaceId"], eni["MacAddress"], eni["PrivateIpAddress"]
    ns, tap = vpc_ns(v, vpc), tap_name(eni_id)

    # The namespace and the TAP exist, and the VMM holds the TAP (an fd on /dev/net/tun).
    assert ns in namespaces(), namespaces()
    assert has_link(ns, tap)
    [pid] = v.vmm_pids()
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert "/dev/net/tun" in fds, fds
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    assert f"tap={tap},mac={mac}".encode() in b" ".join(cmdline), cmdline
    # The TAP is attached: its flags show a reader (the kernel's carrier follows the fd).
    link = subprocess.run(["ip", "-n", ns, "-d", "link", "show", "dev", tap], capture_output=True, text=True).stdout
    assert "tun" in link and "NO-CARRIER" not in link, link

    # The interface's chains are in the ruleset; dnsmasq knows its MAC and address.
    rules = ruleset(ns)
    assert f"chain in-{tap}" in rules and f"chain out-{tap}" in rules, rules
    # (In its configuration file, which dnsmasq reads before it drops its privileges.)
    conf = open(os.path.join(v.data, "net", f"{vpc}-h0", "dnsmasq.conf")).read()
    assert any(line.startswith("dhcp-host=") and mac in line and ip in line for line in conf.splitlines()), conf
    octets = ip.split(".")
    assert f"dhcp-option=tag:ip-{'-'.join(octets)},12,ip-{'-'.join(octets)}" in conf, conf
    assert dnsmasqs(v.data), "a dnsmasq serves the VPC"

    # A rule authorized is in force within a second.
    t0 = time.time()
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "10.99.0.0/16"}]}])
    wait_for("the new rule is not in the ruleset", lambda: "10.99.0.0/16" in ruleset(ns), timeout=1.0)
    print(f"rule in force after {time.time() - t0:.3f} s")
    ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "10.99.0.0/16"}]}])
    wait_for("the revoked rule is still in the ruleset", lambda: "10.99.0.0/16" not in ruleset(ns), timeout=1.0)

    # Terminate: the TAP goes (the VPC has no interface left, so its namespace too).
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    wait_for("the TAP is still there", lambda: ns not in namespaces() or not has_link(ns, tap))

    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_security_group(GroupId=sg)
    ec2.delete_vpc(VpcId=vpc)
    wait_for("the VPC's namespace is still there", lambda: ns not in namespaces())
    assert not os.path.exists(os.path.join(v.data, "net", f"{vpc}-h0"))


def test_a_launch_whose_network_fails_leaves_nothing(vireod):
    """A TAP name taken in the VPC's namespace by something that is not a TAP makes the data
    plane fail: the launch ends terminated with the reason, and its interface is gone."""
    v = vireod
    ec2 = v.client()
    vpc = ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]
    ns = vpc_ns(v, vpc)
    # dnsmasq's directory cannot be made (a file has its name): apply fails halfway, after
    # the namespace and the TAP.
    os.makedirs(os.path.join(v.data, "net"), exist_ok=True)
    blocker = os.path.join(v.data, "net", f"{vpc}-h0")
    with open(blocker, "w") as f:
        f.write("not a directory")
    try:
        ami = image_id(ec2, "vireo-testguest")
        iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                                SubnetId=subnet)["Instances"][0]["InstanceId"]
        wait_state(ec2, iid, "terminated")
        inst = instance(ec2, iid)
        assert "network" in inst["StateReason"]["Message"], inst["StateReason"]
        assert not v.vmm_pids()
        assert not ec2.describe_network_interfaces(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}])["NetworkInterfaces"]
    finally:
        os.remove(blocker)
    # The next change of the VPC removes what the failed apply left.
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)
    wait_for("the failed launch's namespace is still there", lambda: ns not in namespaces())


def test_a_restarted_vireod_rebuilds_what_was_deleted(vireod):
    v = vireod
    ec2 = v.client()
    ami = image_id(ec2, "vireo-testguest")
    # The default VPC, as RunInstances without a subnet picks it.
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, iid, "running")
    inst = instance(ec2, iid)
    vpc = inst["VpcId"]
    ns, tap = vpc_ns(v, vpc), tap_name(inst["NetworkInterfaces"][0]["NetworkInterfaceId"])
    assert has_link(ns, tap)
    v.kill(signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", ns], check=True)
    assert ns not in namespaces()
    v.start()
    ec2 = v.client()  # the restarted vireod listens on a new port
    # Adoption happens before vireod answers.
    assert ns in namespaces()
    assert has_link(ns, tap)
    assert f"chain in-{tap}" in ruleset(ns)
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    assert any(int(p) in dnsmasqs(v.data) for p in pids), "dnsmasq runs in the rebuilt namespace"
    assert instance(ec2, iid)["State"]["Name"] == "running"
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    wait_for("the default VPC's namespace is still there", lambda: ns not in namespaces())


def test_public_addresses_are_routed_from_the_uplink_namespace(vireod):
    """With --uplink-netns, host 0's edge is joined to that namespace: it routes the public
    CIDR to the edge, and the edge answers at its own public address."""
    v = vireod
    ec2 = v.client()
    vpc = ec2.create_vpc(CidrBlock="10.79.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.79.1.0/24")["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    rtb = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]["RouteTableId"]
    ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ami = image_id(ec2, "vireo-testguest")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1, NetworkInterfaces=[{
        "DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": True}])["Instances"][0]["InstanceId"]
    try:
        wait_state(ec2, iid, "running")
        public = instance(ec2, iid)["PublicIpAddress"]
        assert ipaddress.ip_address(public) in ipaddress.ip_network(POOL)
        edge = f"vireo-{tag(v.data)}-edge-h0"
        routes = subprocess.run(["ip", "-n", OUTSIDE, "route"], capture_output=True, text=True).stdout
        assert f"{POOL} via 169.254.1.1" in routes, routes
        edge_routes = subprocess.run(["ip", "-n", edge, "route"], capture_output=True, text=True).stdout
        assert "default via 169.254.1.2" in edge_routes and public in edge_routes, edge_routes
        edge_ip = str(next(ipaddress.ip_network(POOL).hosts()))
        ping = subprocess.run(["ip", "netns", "exec", OUTSIDE, "ping", "-c", "1", "-W", "2", edge_ip],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
        wait_state(ec2, iid, "terminated")


def vmm_holds_tun(pid):
    return "/dev/net/tun" in [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]


def test_a_migrated_instance_takes_its_interface_along(vireod):
    """`vireo migrate`: the destination VMM gets a TAP in the destination host's VPC namespace;
    after the switch-over the instance that stayed routes to the moved one over VXLAN, and the
    source host's TAP is gone. And back."""
    v = vireod
    ec2 = v.client()
    vpc = ec2.create_vpc(CidrBlock="10.80.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.80.1.0/24")["Subnet"]["SubnetId"]
    ami = image_id(ec2, "vireo-testguest")
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=2, MaxCount=2,
                                                       SubnetId=subnet)["Instances"]]
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=os.path.join(v.data, "credentials"),
               AWS_CONFIG_FILE=os.path.join(v.data, "config"), VIREO_ENDPOINT=v.endpoint)
    try:
        for iid in ids:
            wait_state(ec2, iid, "running")
        moving, staying = ids
        eni = instance(ec2, moving)["NetworkInterfaces"][0]
        tap, ip = tap_name(eni["NetworkInterfaceId"]), eni["PrivateIpAddress"]
        h0, h1 = vpc_ns(v, vpc), vpc_ns(v, vpc)[:-1] + "1"
        for hop, (src, dst) in enumerate([(h0, h1), (h1, h0)]):
            out = subprocess.run([VIREO, "migrate", moving], capture_output=True, text=True, env=env, timeout=120)
            assert out.returncode == 0, out.stderr
            # Both VMMs (the moved one is a new process) hold their TAPs.
            pids = v.vmm_pids()
            assert len(pids) == 2 and all(vmm_holds_tun(p) for p in pids), pids
            assert has_link(dst, tap)
            wait_for(f"the TAP is still on the source host after hop {hop}", lambda: not has_link(src, tap))
            if dst == h1:
                # Host 0 (where the other instance is) routes the moved address over VXLAN.
                def routed():
                    r = subprocess.run(["ip", "-n", h0, "route", "get", ip], capture_output=True, text=True)
                    return "vxlan0" in r.stdout
                wait_for(f"host 0 does not route {ip} over VXLAN: {v.log_text()[-1500:]}", routed)
            else:
                wait_for("host 1's namespace is still there", lambda: h1 not in namespaces())
    finally:
        ec2.terminate_instances(InstanceIds=ids)
        for iid in ids:
            wait_state(ec2, iid, "terminated")
    ec2.delete_subnet(SubnetId=subnet)
    ec2.delete_vpc(VpcId=vpc)
    wait_for("the VPC's namespaces are still there", lambda: not any(vpc in n for n in namespaces()))


def test_serve_needs_root_for_the_data_plane_unless_told_not_to(tmp_path):
    """Without root, `vireod serve` stops with one line saying so (and how to go without);
    with --no-network it gets past that (and here stops at the data directory it cannot read)."""
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", VIREOD, "serve",
                 "--data-dir", str(tmp_path / "none"), "--listen", "127.0.0.1:0"]
    out = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0] and "--no-network" in lines[0], out.stderr
    out = subprocess.run(as_nobody + ["--no-network"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "needs root" not in out.stderr and "holds no vireod state" in out.stderr, out.stderr
