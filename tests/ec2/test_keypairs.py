"""Key pairs through boto3 and the AWS CLI: CreateKeyPair, ImportKeyPair, DescribeKeyPairs,
DeleteKeyPair and RunInstances KeyName. Every fingerprint vireod gives is recomputed here with
OpenSSH's and OpenSSL's own tools from the same key, the way EC2's documentation verifies them
(created RSA: SHA-1 of the PKCS#8 DER; imported RSA: MD5 of the DER public key; ed25519: SHA-256,
which EC2 pads with "=" and ssh-keygen does not)."""

import datetime
import os
import re
import sqlite3
import subprocess

import botocore.exceptions
import pytest

from conftest import aws_cli, image_id, instance, wait_state


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def run(*args, stdin=None):
    out = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    assert out.returncode == 0, (args, out.stderr.decode(errors="replace"))
    return out.stdout


def tool_needed(name):
    if subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True).returncode != 0:
        pytest.fail(f"{name} is needed (scripts/install-deps.sh installs it)", pytrace=False)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    tool_needed("ssh-keygen")
    tool_needed("openssl")
    return tmp_path_factory.mktemp("keys")


def write_private(keydir, name, material):
    path = keydir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(material)
    return str(path)


def ssh_keygen_key(keydir, name, kind, bits=None):
    """A key pair made by ssh-keygen: (private key path, public key line)."""
    path = str(keydir / name)
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", path]
    if bits:
        args += ["-b", str(bits)]
    run(*args)
    with open(path + ".pub") as f:
        return path, f.read().strip()


def sha256_fingerprint(key_file):
    """`ssh-keygen -l -E sha256`'s digest, with the padding EC2 adds."""
    line = run("ssh-keygen", "-l", "-E", "sha256", "-f", key_file).decode()
    digest = re.search(r"SHA256:([A-Za-z0-9+/]+)", line).group(1)
    return digest + "=" * (-len(digest) % 4)


def openssl_digest(data, alg):
    """`openssl ALG -c` of `data`: the colon-hex digest."""
    out = run("openssl", alg, "-c", stdin=data).decode()
    return out.strip().split("= ")[-1]


def rsa_created_fingerprint(pem_file):
    der = run("openssl", "pkcs8", "-topk8", "-nocrypt", "-inform", "PEM", "-outform", "DER", "-in", pem_file)
    return openssl_digest(der, "sha1")


def rsa_imported_fingerprint(pub_file):
    pkcs8 = run("ssh-keygen", "-e", "-m", "PKCS8", "-f", pub_file)
    der = run("openssl", "pkey", "-pubin", "-outform", "DER", stdin=pkcs8)
    return openssl_digest(der, "md5")


def key_of(line):
    """An OpenSSH public key line without its comment."""
    return " ".join(line.split()[:2])


def describe_one(ec2, name, **kw):
    pairs = ec2.describe_key_pairs(KeyNames=[name], **kw)["KeyPairs"]
    assert len(pairs) == 1, pairs
    return pairs[0]


def test_created_key_pairs_have_ec2s_formats_and_fingerprints(ec2, keydir):
    tags = [{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "blue"}]}]
    made = ec2.create_key_pair(KeyName="made-ed25519", KeyType="ed25519", TagSpecifications=tags)
    assert re.fullmatch(r"key-[0-9a-f]{17}", made["KeyPairId"])
    assert made["KeyName"] == "made-ed25519"
    assert made["Tags"] == [{"Key": "team", "Value": "blue"}]
    assert made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    priv = write_private(keydir, "made-ed25519", made["KeyMaterial"])
    assert made["KeyFingerprint"] == sha256_fingerprint(priv)
    # The private key loads, and its public half is the one vireod keeps.
    derived = run("ssh-keygen", "-y", "-f", priv).decode().strip()
    desc = describe_one(ec2, "made-ed25519", IncludePublicKey=True)
    assert key_of(desc["PublicKey"]) == key_of(derived)
    assert desc["KeyType"] == "ed25519"
    assert desc["KeyFingerprint"] == made["KeyFingerprint"]
    assert desc["KeyPairId"] == made["KeyPairId"]
    assert desc["Tags"] == [{"Key": "team", "Value": "blue"}]
    age = datetime.datetime.now(datetime.timezone.utc) - desc["CreateTime"]
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
    # Without IncludePublicKey, no public key.
    assert "PublicKey" not in describe_one(ec2, "made-ed25519")

    made = ec2.create_key_pair(KeyName="made-rsa")  # KeyType defaults to rsa, as on EC2
    assert made["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    priv = write_private(keydir, "made-rsa", made["KeyMaterial"])
    assert made["KeyFingerprint"] == rsa_created_fingerprint(priv)
    assert re.fullmatch(r"([0-9a-f]{2}:){19}[0-9a-f]{2}", made["KeyFingerprint"])
    derived = run("ssh-keygen", "-y", "-f", priv).decode().strip()
    desc = describe_one(ec2, "made-rsa", IncludePublicKey=True)
    assert key_of(desc["PublicKey"]) == key_of(derived)
    assert desc["KeyType"] == "rsa"
    assert run("ssh-keygen", "-l", "-f", priv).decode().split()[0] == "2048"
    for pair in ("made-rsa", "made-ed25519"):
        ec2.delete_key_pair(KeyName=pair)


def test_private_keys_are_not_stored(ec2, vireod):
    made = ec2.create_key_pair(KeyName="secret-check")
    # The PEM's last full line of base64: private numbers only (the CRT coefficient).
    needle = made["KeyMaterial"].splitlines()[-3].encode()
    assert len(needle) == 64
    for name in os.listdir(vireod.data):
        path = os.path.join(vireod.data, name)
        if os.path.isfile(path) and name.startswith("state.db"):
            with open(path, "rb") as f:
                assert needle not in f.read(), f"the private key is in {name}"
    ec2.delete_key_pair(KeyName="secret-check")


def test_imported_keys_fingerprints_match_openssh_and_openssl(ec2, keydir):
    priv, line = ssh_keygen_key(keydir, "imp-ed25519", "ed25519")
    got = ec2.import_key_pair(KeyName="imp-ed25519", PublicKeyMaterial=line.encode(),
                              TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "src", "Value": "laptop"}]}])
    assert got["KeyFingerprint"] == sha256_fingerprint(priv + ".pub")
    assert re.fullmatch(r"key-[0-9a-f]{17}", got["KeyPairId"])
    assert got["Tags"] == [{"Key": "src", "Value": "laptop"}]
    desc = describe_one(ec2, "imp-ed25519", IncludePublicKey=True)
    assert desc["PublicKey"] == line and desc["KeyType"] == "ed25519"

    for bits in (2048, 4096):
        name = f"imp-rsa-{bits}"
        priv, line = ssh_keygen_key(keydir, name, "rsa", bits)
        got = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=line.encode())
        want = rsa_imported_fingerprint(priv + ".pub")
        assert got["KeyFingerprint"] == want
        # EC2's MD5 is of the DER public key, not of the SSH blob that `ssh-keygen -E md5`
        # hashes: the two differ, as on EC2.
        ssh_md5 = run("ssh-keygen", "-l", "-E", "md5", "-f", priv + ".pub").decode().split()[1]
        assert ssh_md5.startswith("MD5:") and ssh_md5[4:] != want
        desc = describe_one(ec2, name, IncludePublicKey=True)
        assert desc["PublicKey"] == line and desc["KeyType"] == "rsa"

    # The same key in RFC 4716 form imports to the same fingerprint.
    rfc = run("ssh-keygen", "-e", "-f", priv + ".pub")
    assert rfc.startswith(b"---- BEGIN SSH2 PUBLIC KEY ----")
    got = ec2.import_key_pair(KeyName="imp-rfc4716", PublicKeyMaterial=rfc)
    assert got["KeyFingerprint"] == rsa_imported_fingerprint(priv + ".pub")
    assert key_of(describe_one(ec2, "imp-rfc4716", IncludePublicKey=True)["PublicKey"]) == key_of(line)

    # A key EC2 made, imported again, gets the imported kind's fingerprint (MD5), as on EC2.
    made = ec2.create_key_pair(KeyName="made-then-imported")
    pem = write_private(keydir, "made-then-imported", made["KeyMaterial"])
    public = run("ssh-keygen", "-y", "-f", pem)
    again = ec2.import_key_pair(KeyName="made-then-imported-2", PublicKeyMaterial=public)
    assert again["KeyFingerprint"] != made["KeyFingerprint"]
    with open(str(keydir / "reimported.pub"), "wb") as f:
        f.write(public)
    assert again["KeyFingerprint"] == rsa_imported_fingerprint(str(keydir / "reimported.pub"))

    for name in ("imp-ed25519", "imp-rsa-2048", "imp-rsa-4096", "imp-rfc4716", "made-then-imported",
                 "made-then-imported-2"):
        ec2.delete_key_pair(KeyName=name)


def test_bad_material_and_duplicates_change_nothing(ec2, keydir):
    def names():
        return sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"])

    before = names()
    _, ecdsa = ssh_keygen_key(keydir, "ecdsa", "ecdsa")
    _, good = ssh_keygen_key(keydir, "dup-src", "ed25519")
    for bad in (b"not a key", b"ssh-ed25519 AAAA", b"ssh-rsa " + b"A" * 100, ecdsa.encode(),
                good.encode() + b"\n" + good.encode(), b"\xff\xfe\x00"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.import_key_pair(KeyName="bad-material", PublicKeyMaterial=bad)
        assert error_code(e) == "InvalidKey.Format", bad
    assert names() == before
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_key_pairs(KeyNames=["bad-material"])
    assert error_code(e) == "InvalidKeyPair.NotFound"

    first = ec2.import_key_pair(KeyName="dup", PublicKeyMaterial=good.encode())
    for attempt in (lambda: ec2.create_key_pair(KeyName="dup"),
                    lambda: ec2.create_key_pair(KeyName="dup", KeyType="ed25519"),
                    lambda: ec2.import_key_pair(KeyName="dup", PublicKeyMaterial=good.encode())):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            attempt()
        assert error_code(e) == "InvalidKeyPair.Duplicate"
    desc = describe_one(ec2, "dup")
    assert desc["KeyPairId"] == first["KeyPairId"] and desc["KeyFingerprint"] == first["KeyFingerprint"]
    # Names are case-sensitive, as on EC2.
    ec2.import_key_pair(KeyName="DUP", PublicKeyMaterial=good.encode())

    for kw, code in (({"KeyType": "dsa"}, "InvalidParameterValue"),
                     ({"KeyFormat": "ppk"}, "UnsupportedOperation"),
                     ({"TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]},
                      "InvalidParameterValue"),
                     ({"TagSpecifications": [{"ResourceType": "key-pair", "Tags": [{"Key": "aws:x", "Value": "b"}]}]},
                      "InvalidParameterValue")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.create_key_pair(KeyName="never", **kw)
        assert error_code(e) == code, kw
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_key_pair(KeyName="é")
    assert error_code(e) == "InvalidParameterValue"
    assert names() == sorted(before + ["DUP", "dup"])
    ec2.delete_key_pair(KeyName="dup")
    ec2.delete_key_pair(KeyName="DUP")


def test_describe_filters_tags_and_delete(ec2, keydir):
    a = ec2.create_key_pair(KeyName="flt-a", KeyType="ed25519",
                            TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "env", "Value": "prod"}]}])
    _, line = ssh_keygen_key(keydir, "flt-b", "rsa", 2048)
    b = ec2.import_key_pair(KeyName="flt-b", PublicKeyMaterial=line.encode())

    def find(**kw):
        return sorted(k["KeyName"] for k in ec2.describe_key_pairs(**kw)["KeyPairs"])

    assert find(Filters=[{"Name": "key-name", "Values": ["flt-*"]}]) == ["flt-a", "flt-b"]
    assert find(KeyPairIds=[b["KeyPairId"]]) == ["flt-b"]
    assert find(KeyNames=["flt-a"], KeyPairIds=[b["KeyPairId"]]) == ["flt-a", "flt-b"]
    assert find(Filters=[{"Name": "key-pair-id", "Values": [a["KeyPairId"]]}]) == ["flt-a"]
    assert find(Filters=[{"Name": "fingerprint", "Values": [b["KeyFingerprint"]]}]) == ["flt-b"]
    assert find(Filters=[{"Name": "key-type", "Values": ["ed25519"]}, {"Name": "key-name", "Values": ["flt-*"]}]) == ["flt-a"]
    assert find(Filters=[{"Name": "tag:env", "Values": ["prod"]}]) == ["flt-a"]
    assert find(Filters=[{"Name": "tag-key", "Values": ["env"]}]) == ["flt-a"]
    # CreateTags and DescribeTags know key pairs.
    ec2.create_tags(Resources=[b["KeyPairId"]], Tags=[{"Key": "env", "Value": "dev"}])
    assert find(Filters=[{"Name": "tag:env", "Values": ["dev"]}]) == ["flt-b"]
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [b["KeyPairId"]]}])["Tags"]
    assert tags == [{"Key": "env", "Value": "dev", "ResourceId": b["KeyPairId"], "ResourceType": "key-pair"}]

    for kw, code in (({"KeyNames": ["no-such-key"]}, "InvalidKeyPair.NotFound"),
                     ({"KeyPairIds": ["key-0123456789abcdef0"]}, "InvalidKeyPair.NotFound"),
                     ({"KeyPairIds": ["key-nothex"]}, "InvalidKeyPairId.Malformed"),
                     ({"Filters": [{"Name": "colour", "Values": ["x"]}]}, "InvalidParameterValue")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.describe_key_pairs(**kw)
        assert error_code(e) == code, kw

    # Delete by id answers the id; by name; a pair that does not exist is no error (EC2's).
    assert ec2.delete_key_pair(KeyPairId=a["KeyPairId"])["KeyPairId"] == a["KeyPairId"]
    ec2.delete_key_pair(KeyName="flt-b")
    gone = ec2.delete_key_pair(KeyName="flt-b")
    assert gone["Return"] is True and "KeyPairId" not in gone
    ec2.delete_key_pair(KeyPairId="key-0123456789abcdef0")
    assert find(Filters=[{"Name": "key-name", "Values": ["flt-*"]}]) == []
    # Its tags went with it.
    assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [b["KeyPairId"]]}])["Tags"] == []


def test_run_instances_with_a_key_pair(ec2, vireod, keydir):
    ami = image_id(ec2, "vireo-testguest")

    def instance_count():
        return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])

    before = instance_count()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1, KeyName="no-such-key")
    assert error_code(e) == "InvalidKeyPair.NotFound"
    assert instance_count() == before, "nothing launched"

    made = ec2.create_key_pair(KeyName="launch-key", KeyType="ed25519")
    iid = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                            KeyName="launch-key")["Instances"][0]["InstanceId"]
    assert instance(ec2, iid)["KeyName"] == "launch-key"
    public = describe_one(ec2, "launch-key", IncludePublicKey=True)["PublicKey"]
    derived = run("ssh-keygen", "-y", "-f", write_private(keydir, "launch-key", made["KeyMaterial"])).decode()
    assert key_of(public) == key_of(derived)
    wait_state(ec2, iid, "running")
    # The instance keeps the key (OpenSSH format, for the metadata service's
    # public-keys/0/openssh-key) after the pair is deleted, and still names it.
    ec2.delete_key_pair(KeyName="launch-key")
    assert instance(ec2, iid)["KeyName"] == "launch-key"
    db = sqlite3.connect(os.path.join(vireod.data, "state.db"))
    try:
        (kept,) = db.execute("SELECT public_key FROM instances WHERE instance_id = ?", (iid,)).fetchone()
    finally:
        db.close()
    assert kept == public
    # An instance launched without a key has none.
    other = ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1)["Instances"][0]
    assert "KeyName" not in other
    ec2.terminate_instances(InstanceIds=[iid, other["InstanceId"]])
    wait_state(ec2, iid, "terminated")
    wait_state(ec2, other["InstanceId"], "terminated")


def test_terraform_aws_key_pair_sequence(ec2, keydir):
    """What Terraform's aws_key_pair does: ImportKeyPair with tags, then on every refresh
    DescribeKeyPairs by name with IncludePublicKey, and on destroy DeleteKeyPair, after which the
    same describe answers InvalidKeyPair.NotFound (Terraform's "gone" check)."""
    priv, line = ssh_keygen_key(keydir, "tf-key", "ed25519")
    created = ec2.import_key_pair(
        KeyName="tf-key", PublicKeyMaterial=line.encode(),
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "Name", "Value": "tf-key"}]}])
    for _ in range(2):
        got = describe_one(ec2, "tf-key", IncludePublicKey=True)
        assert got["KeyPairId"] == created["KeyPairId"]
        assert got["KeyFingerprint"] == created["KeyFingerprint"] == sha256_fingerprint(priv)
        assert got["KeyType"] == "ed25519" and got["PublicKey"] == line
        assert got["Tags"] == [{"Key": "Name", "Value": "tf-key"}]
    ec2.delete_key_pair(KeyName="tf-key")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_key_pairs(KeyNames=["tf-key"], IncludePublicKey=True)
    assert error_code(e) == "InvalidKeyPair.NotFound"


def test_aws_cli_key_pairs(vireod, keydir):
    made = aws_cli(vireod, "create-key-pair", "--key-name", "cli-key", "--key-type", "ed25519")
    pem = write_private(keydir, "cli-key", made["KeyMaterial"])
    assert made["KeyFingerprint"] == sha256_fingerprint(pem)

    priv, line = ssh_keygen_key(keydir, "cli-imported", "rsa", 3072)
    got = aws_cli(vireod, "import-key-pair", "--key-name", "cli-imported",
                  "--public-key-material", f"fileb://{priv}.pub")
    assert got["KeyFingerprint"] == rsa_imported_fingerprint(priv + ".pub")
    desc = aws_cli(vireod, "describe-key-pairs", "--key-names", "cli-imported", "cli-key", "--include-public-key")
    by_name = {k["KeyName"]: k for k in desc["KeyPairs"]}
    assert by_name["cli-imported"]["PublicKey"] == line
    assert key_of(by_name["cli-key"]["PublicKey"]) == key_of(run("ssh-keygen", "-y", "-f", pem).decode())

    bad = keydir / "bad.pub"
    bad.write_text("ssh-rsa not-a-key\n")
    out = aws_cli(vireod, "import-key-pair", "--key-name", "cli-bad", "--public-key-material", f"fileb://{bad}", ok=False)
    assert out.returncode != 0 and "InvalidKey.Format" in out.stderr
    out = aws_cli(vireod, "create-key-pair", "--key-name", "cli-key", ok=False)
    assert out.returncode != 0 and "InvalidKeyPair.Duplicate" in out.stderr

    aws_cli(vireod, "delete-key-pair", "--key-name", "cli-key")
    aws_cli(vireod, "delete-key-pair", "--key-pair-id", got["KeyPairId"])
    out = aws_cli(vireod, "describe-key-pairs", "--key-names", "cli-key", ok=False)
    assert out.returncode != 0 and "InvalidKeyPair.NotFound" in out.stderr


def test_vireo_cli_keys(ec2, vireod, keydir):
    """`vireo keys` and `vireo run --key` against vireod."""
    from conftest import VIREO
    env = dict(os.environ, AWS_SHARED_CREDENTIALS_FILE=os.path.join(vireod.data, "credentials"),
               AWS_CONFIG_FILE=os.path.join(vireod.data, "config"), AWS_PROFILE="vireo",
               VIREO_ENDPOINT=vireod.endpoint)
    workdir = keydir / "cli"
    workdir.mkdir()

    def vireo(*args):
        return subprocess.run([VIREO, *args], capture_output=True, text=True, env=env, cwd=workdir, timeout=60)

    out = vireo("keys", "create", "cli-web")
    assert out.returncode == 0, out.stderr
    pem = workdir / "cli-web.pem"
    assert os.stat(pem).st_mode & 0o777 == 0o600
    desc = describe_one(ec2, "cli-web", IncludePublicKey=True)
    assert desc["KeyType"] == "ed25519" and desc["KeyPairId"] in out.stdout
    assert desc["KeyFingerprint"] == sha256_fingerprint(str(pem))
    assert key_of(desc["PublicKey"]) == key_of(run("ssh-keygen", "-y", "-f", str(pem)).decode())

    # An existing file is never overwritten, and then no key pair is made.
    before = pem.read_bytes()
    out = vireo("keys", "create", "cli-web-2", "--out", str(pem))
    assert out.returncode == 2 and "not overwriting" in out.stderr
    assert pem.read_bytes() == before
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_key_pairs(KeyNames=["cli-web-2"])
    assert error_code(e) == "InvalidKeyPair.NotFound"
    # A failed CreateKeyPair leaves no file behind.
    out = vireo("keys", "create", "cli-web", "--out", str(workdir / "dup.pem"))
    assert out.returncode == 1 and "InvalidKeyPair.Duplicate" in out.stderr
    assert not (workdir / "dup.pem").exists()

    out = vireo("--json", "keys", "create", "cli-rsa", "--type", "rsa", "-o", str(workdir / "rsa-key"))
    assert out.returncode == 0, out.stderr
    assert rsa_created_fingerprint(str(workdir / "rsa-key")) == describe_one(ec2, "cli-rsa")["KeyFingerprint"]
    assert '"private_key_file"' in out.stdout

    _, line = ssh_keygen_key(keydir, "cli-imp", "ed25519")
    out = vireo("keys", "import", "cli-imp", str(keydir / "cli-imp.pub"))
    assert out.returncode == 0, out.stderr
    assert describe_one(ec2, "cli-imp", IncludePublicKey=True)["PublicKey"] == line
    out = vireo("keys", "import", "cli-bad", str(pem))  # a private key is no public key
    assert out.returncode == 1 and "InvalidKey.Format" in out.stderr

    listed = vireo("keys", "list")
    assert listed.returncode == 0
    for name in ("cli-web", "cli-rsa", "cli-imp"):
        assert name in listed.stdout

    ami = image_id(ec2, "vireo-testguest")
    out = vireo("--json", "run", "--image", ami, "--type", "t3.nano", "--key", "cli-web")
    assert out.returncode == 0, out.stderr
    iid = re.search(r'"instance_id": "(i-[0-9a-f]+)"', out.stdout).group(1)
    assert instance(ec2, iid)["KeyName"] == "cli-web"
    out = vireo("run", "--image", ami, "--type", "t3.nano", "--key", "no-such-key")
    assert out.returncode == 1 and "InvalidKeyPair.NotFound" in out.stderr

    for name in ("cli-web", "cli-rsa", "cli-imp"):
        out = vireo("keys", "delete", name)
        assert out.returncode == 0 and "deleted" in out.stdout, out.stderr
    out = vireo("keys", "delete", "cli-web")
    assert out.returncode == 0 and "nothing to delete" in out.stdout
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
