"""End-to-end tests of vireod with real EC2 clients (boto3, the AWS CLI).

Each test module gets its own vireod: a fresh data directory (`vireod init` with the images built
by `make images`), `vireod serve` on a free loopback port, and real vireo-vmm processes on this
host's KVM running the small instance guest. Everything a test starts is ended by PID and every
directory it made is removed, also when it fails.
"""

import configparser
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time

import boto3
import botocore.config
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release")
VIREO = os.environ.get("VIREO_CLI_BIN", os.path.join(os.path.dirname(os.environ.get("VIREOD_BIN", os.path.join(RELEASE, "vireod"))), "vireo"))
VIREOD = os.environ.get("VIREOD_BIN", os.path.join(RELEASE, "vireod"))
VMM = os.environ.get("VIREO_VMM_BIN", os.path.join(RELEASE, "vireo-vmm"))
GUEST = os.path.join(ROOT, "build", "guest")
REGION = "vireo-local-1"


def require(path, what):
    if not os.path.exists(path):
        pytest.fail(f"{what} {path} is missing: run `make build images` (make test does)", pytrace=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Vireod:
    """One vireod with its own data directory."""

    def __init__(self, *serve_args, images=("testguest.json",)):
        require(VIREOD, "vireod")
        require(VMM, "vireo-vmm")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            pytest.fail("these tests launch real VMs and need read/write access to /dev/kvm", pytrace=False)
        for m in images:
            require(os.path.join(GUEST, m), "image manifest")
        self.tmp = tempfile.mkdtemp(prefix="vireod-test-")
        self.data = os.path.join(self.tmp, "data")
        self.serve_args = list(serve_args)
        self.proc = None
        args = [VIREOD, "init", "--data-dir", self.data, "--region", REGION]
        for m in images:
            args += ["--image", os.path.join(GUEST, m)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.init_output = out.stdout
        creds = configparser.ConfigParser()
        creds.read(os.path.join(self.data, "credentials"))
        self.key_id = creds["vireo"]["aws_access_key_id"]
        self.secret = creds["vireo"]["aws_secret_access_key"]
        self.start()

    def start(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.tmp, "vireod.log"), "ab")
        self.proc = subprocess.Popen(
            [VIREOD, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--vmm", VMM, "--shutdown-timeout", "2", *self.serve_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vireod exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("vireod did not listen within 30 s")

    def kill(self, sig=signal.SIGKILL):
        """Ends vireod only (its VMMs keep running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.log.close()

    def log_text(self):
        with open(os.path.join(self.tmp, "vireod.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def client(self, **kw):
        return boto3.client(
            "ec2", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=kw.get("key_id", self.key_id),
            aws_secret_access_key=kw.get("secret", self.secret),
            config=botocore.config.Config(retries={"max_attempts": 1}))

    def vmm_pids(self):
        """PIDs of this vireod's VMMs that are still alive (from its state database)."""
        db = sqlite3.connect(os.path.join(self.data, "state.db"))
        try:
            rows = db.execute("SELECT pid FROM instances WHERE pid IS NOT NULL").fetchall()
        finally:
            db.close()
        pids = []
        for (pid,) in rows:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.data.encode() in f.read():
                        pids.append(pid)
            except OSError:
                pass
        return pids

    def close(self):
        self.kill(signal.SIGTERM)
        for pid in self.vmm_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while self.vmm_pids() and time.time() < deadline:
            time.sleep(0.05)
        # Migration hosts (network namespaces) this vireod made, if any.
        subprocess.run([VIREOD, "remove-hosts", "--data-dir", self.data], capture_output=True, timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def vireod():
    v = Vireod()
    yield v
    v.close()


@pytest.fixture(scope="module")
def ec2(vireod):
    return vireod.client()


def image_id(ec2, name):
    imgs = ec2.describe_images(Filters=[{"Name": "name", "Values": [name]}])["Images"]
    assert len(imgs) == 1, imgs
    return imgs[0]["ImageId"]


def instance(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def wait_state(ec2, iid, want, timeout=60):
    deadline = time.time() + timeout
    while True:
        st = instance(ec2, iid)["State"]["Name"]
        if st == want:
            return
        if time.time() > deadline:
            raise AssertionError(f"{iid} is {st}, not {want}, after {timeout} s")
        time.sleep(0.1)


def console(ec2, iid):
    import base64
    out = ec2.get_console_output(InstanceId=iid).get("Output", "")
    # boto3 decodes the base64 output for us
    return out if isinstance(out, str) else base64.b64decode(out).decode()


def wait_console(ec2, iid, text, timeout=60):
    deadline = time.time() + timeout
    while True:
        out = console(ec2, iid)
        if text in out:
            return out
        if time.time() > deadline:
            raise AssertionError(f"{text!r} not in the console of {iid} after {timeout} s:\n{out}")
        time.sleep(0.1)


def aws_cli(vireod, *args, ok=True):
    """`aws ec2 ARGS` (the AWS CLI of build/pyenv, JSON output) against `vireod` with its
    credentials: the answer parsed (None if empty) once it succeeded, or with ok=False the
    finished process whatever its status."""
    aws = os.path.join(ROOT, "build", "pyenv", "bin", "aws")
    env = dict(os.environ,
               AWS_SHARED_CREDENTIALS_FILE=os.path.join(vireod.data, "credentials"),
               AWS_CONFIG_FILE=os.path.join(vireod.data, "config"),
               AWS_PROFILE="vireo")
    out = subprocess.run([aws, "--endpoint-url", vireod.endpoint, "--output", "json", "ec2", *args],
                         capture_output=True, text=True, env=env, timeout=60)
    if not ok:
        return out
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None
