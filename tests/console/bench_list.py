"""The console's instance list with 1,000 instances (issue 20's benchmark): in headless Chromium,
the time from navigation to the table drawn, beside DescribeInstances for the same 1,000 through
boto3 and the console's own JSON call alone. Target: under 1 s.

The 1,000 instances are stopped records written into a fresh vireod's state database (as
benches/api.py does for DescribeInstances): no VM runs. `make bench-console` runs it; it prints
a table and is no test (pytest does not collect it).

Figures, each the median and the worst of REPEAT runs:
- "page load": a fresh load of /console/#/instances, from the navigation's start to the table
  drawn (HTML, script, the session call, the list call and the 1,000 rows): app.js's
  body[data-ready-at];
- "in-page": from the Instances link clicked on another page to the table drawn
  (body[data-draw-ms]);
- "console API": GET /console/api/instances from Python, the JSON alone;
- "boto3": DescribeInstances, every page of MaxResults=1000.
"""

import http.cookiejar
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import Vireod, new_browser  # noqa: E402

N = int(os.environ.get("BENCH_INSTANCES", "1000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))


def seed(data, n):
    db = sqlite3.connect(os.path.join(data, "state.db"))
    owner = db.execute("SELECT value FROM settings WHERE key='owner_id'").fetchone()[0]
    ami = db.execute("SELECT image_id FROM images LIMIT 1").fetchone()[0]
    rows, tags = [], []
    for k in range(n):
        iid = f"i-{k:017x}"
        rows.append((iid, f"r-{k // 10:017x}", owner, ami, "t3.nano", 2, 512, "stopped", "Client.UserInitiatedShutdown",
                     "Client.UserInitiatedShutdown: User initiated shutdown", "2026-11-21T12:00:00.000Z", k % 10, None,
                     b"", os.path.join(data, "instances", iid)))
        tags += [(iid, "Name", f"bench-{k}"), (iid, "group", f"g{k % 100}")]
    db.executemany("INSERT INTO instances(instance_id, reservation_id, owner_id, image_id, instance_type, vcpus, memory_mib,"
                   " state, reason_code, reason_message, launch_time, launch_index, client_token, user_data, dir)"
                   " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.executemany("INSERT INTO tags(resource_id, key, value) VALUES(?,?,?)", tags)
    db.commit()
    db.close()


def ms(x):
    return f"{x:8.1f} ms"


def wait(b, cond, timeout=60):
    return WebDriverWait(b, timeout, poll_frequency=0.02).until(cond)


def drawn(b):
    wait(b, EC.presence_of_element_located((By.CSS_SELECTOR, 'body[data-ready="instances"]')))
    rows = b.execute_script("return document.querySelectorAll('#instance-rows tr[data-instance-id]').length")
    assert rows == N, rows


def main():
    v = Vireod()
    profile = tempfile.mkdtemp(prefix="vireo-chromium-")
    b = None
    try:
        v.stop()
        seed(v.data, N)
        v.start()
        ec2 = v.client()

        boto = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            count = 0
            for page in ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 1000}):
                count += sum(len(r["Instances"]) for r in page["Reservations"])
            boto.append((time.perf_counter() - t0) * 1000)
            assert count == N, count

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        req = urllib.request.Request(
            v.url + "/console/api/signin", method="POST",
            data=json.dumps({"access_key_id": v.key_id, "secret_access_key": v.secret}).encode(),
            headers={"Content-Type": "application/json", "Origin": v.url})
        opener.open(req).read()
        api = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            body = json.loads(opener.open(v.url + "/console/api/instances").read())
            api.append((time.perf_counter() - t0) * 1000)
            assert len(body["instances"]) == N

        b = new_browser(profile)
        b.get(v.url + "/console/")
        wait(b, EC.presence_of_element_located((By.ID, "signin-form")))
        b.find_element(By.ID, "access-key-id").send_keys(v.key_id)
        b.find_element(By.ID, "secret-access-key").send_keys(v.secret)
        b.find_element(By.ID, "signin-button").click()
        drawn(b)
        load, inpage = [], []
        for _ in range(REPEAT):
            b.get("about:blank")
            b.get(v.url + "/console/#/instances")
            drawn(b)
            load.append(float(b.find_element(By.TAG_NAME, "body").get_attribute("data-ready-at")))
            b.find_element(By.CSS_SELECTOR, '#nav a[data-page="images"]').click()
            wait(b, EC.presence_of_element_located((By.CSS_SELECTOR, 'body[data-ready="images"]')))
            b.find_element(By.CSS_SELECTOR, '#nav a[data-page="instances"]').click()
            drawn(b)
            inpage.append(float(b.find_element(By.TAG_NAME, "body").get_attribute("data-draw-ms")))

        print(f"console instance list, {N} instances, {REPEAT} runs each (median, worst)")
        for name, t in [("Chromium: page load to table drawn", load),
                        ("Chromium: in-page navigation to table drawn", inpage),
                        ("console API: GET /console/api/instances", api),
                        ("boto3: DescribeInstances (pages of 1000)", boto)]:
            print(f"  {name:45} {ms(statistics.median(t))} {ms(max(t))}")
    finally:
        if b is not None:
            b.quit()
        shutil.rmtree(profile, ignore_errors=True)
        v.close()


if __name__ == "__main__":
    main()
