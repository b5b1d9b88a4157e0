"""The web console in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium, against a vireod started for the module on a free loopback port.

vireod runs with --no-network (the console needs no data plane). Most tests use resources that
need no running guest (VPCs, key pairs, images); test_instances.py launches the small test guest
(`make images`), which runs on this host's KVM. Everything started (vireod, its VMMs, the
browser) is ended by PID and every directory made is removed, also when a test fails. Screenshots of each
page go to build/console-screenshots/ (for docs/console.md).
"""

import configparser
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
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release")
VIREOD = os.environ.get("VIREOD_BIN", os.path.join(RELEASE, "vireod"))
VMM = os.environ.get("VIREO_VMM_BIN", os.path.join(RELEASE, "vireo-vmm"))
GUEST = os.path.join(ROOT, "build", "guest")
SHOTS = os.path.join(ROOT, "build", "console-screenshots")
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
REGION = "vireo-local-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Vireod:
    """One vireod with its own data directory, serving the console on loopback."""

    def __init__(self):
        for path, what in [(VIREOD, "vireod"), (CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")]:
            if not os.path.exists(path):
                pytest.fail(f"{what} {path} is missing: run `make build` (scripts/install-deps.sh installs chromium)", pytrace=False)
        self.tmp = tempfile.mkdtemp(prefix="vireod-console-")
        self.data = os.path.join(self.tmp, "data")
        self.proc = None
        args = [VIREOD, "init", "--data-dir", self.data, "--region", REGION]
        # The test guest's image, where `make images` made it, fills the images page.
        manifest = os.path.join(GUEST, "testguest.json")
        if os.path.exists(manifest):
            args += ["--image", manifest]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        creds = configparser.ConfigParser()
        creds.read(os.path.join(self.data, "credentials"))
        self.key_id = creds["vireo"]["aws_access_key_id"]
        self.secret = creds["vireo"]["aws_secret_access_key"]
        self.start()

    def start(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.tmp, "vireod.log"), "ab")
        self.proc = subprocess.Popen(
            [VIREOD, "serve", "--data-dir", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--vmm", VMM, "--no-network", "--shutdown-timeout", "2"],
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

    def log_text(self):
        with open(os.path.join(self.tmp, "vireod.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def client(self):
        return boto3.client(
            "ec2", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
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

    def stop(self):
        """Ends vireod only (SIGTERM; its VMMs keep running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()
        for pid in self.vmm_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while self.vmm_pids() and time.time() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def vireod():
    v = Vireod()
    yield v
    v.close()


@pytest.fixture(scope="module")
def ec2(vireod):
    return vireod.client()


def new_browser(profile_dir):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,900", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-sync", "--disable-default-apps",
              f"--user-data-dir={profile_dir}"]:
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": os.path.join(profile_dir, "downloads"),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture
def browser():
    """A fresh headless Chromium (its own profile: no cookies from another test)."""
    profile = tempfile.mkdtemp(prefix="vireo-chromium-")
    b = new_browser(profile)
    b.set_page_load_timeout(60)
    b.set_script_timeout(30)
    try:
        yield b
    finally:
        b.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def shots():
    os.makedirs(SHOTS, exist_ok=True)
    return SHOTS
