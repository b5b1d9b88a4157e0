"""The console as a person uses it, in headless Chromium: sign-in (a wrong secret refused, the
right one opening the pages), each page drawn from vireod's data with a screenshot kept, a tag
value that is HTML shown as text and running nothing, CSRF refusals (no token; another origin)
changing nothing, a key pair made from the page, and sign-out.
"""

import http.server
import os
import threading

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

XSS = '<img src=x onerror="window.__vireoXss=1;document.title=\'pwned\'">'


def wait(b, cond, timeout=20):
    return WebDriverWait(b, timeout).until(cond)


def sign_in(b, v, secret=None):
    b.get(v.url + "/console/")
    wait(b, EC.presence_of_element_located((By.ID, "signin-form")))
    b.find_element(By.ID, "access-key-id").send_keys(v.key_id)
    b.find_element(By.ID, "secret-access-key").send_keys(secret if secret is not None else v.secret)
    b.find_element(By.ID, "signin-button").click()


def signed_in(b, v):
    sign_in(b, v)
    wait(b, EC.visibility_of_element_located((By.ID, "nav")))
    wait(b, EC.presence_of_element_located((By.CSS_SELECTOR, 'body[data-ready="instances"]')))
    wait(b, EC.presence_of_element_located((By.ID, "instances")))


def shot(b, shots, name):
    path = os.path.join(shots, name + ".png")
    assert b.save_screenshot(path), path
    assert os.path.getsize(path) > 1000
    return path


def page(b, v, name, marker):
    """Goes to the page `name` and waits until it is drawn (app.js sets body[data-ready])."""
    b.get(v.url + "/console/#/" + name)
    wait(b, EC.presence_of_element_located((By.CSS_SELECTOR, f'body[data-ready="{name}"]')))
    return wait(b, EC.presence_of_element_located(marker))


def test_a_wrong_secret_is_refused(vireod, browser, shots):
    sign_in(browser, vireod, secret=vireod.secret[:-1] + ("A" if vireod.secret[-1] != "A" else "B"))
    err = wait(browser, EC.presence_of_element_located((By.ID, "signin-error")))
    wait(browser, lambda b: err.text != "")
    assert "not valid" in err.text
    assert browser.find_element(By.ID, "nav").is_displayed() is False
    assert browser.get_cookies() == [], "no session cookie for a wrong secret"
    shot(browser, shots, "01-sign-in-refused")


def test_sign_in_and_every_page(vireod, ec2, browser, shots):
    ec2.create_key_pair(KeyName="console-demo", KeyType="ed25519")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "console-demo"}]}])["Vpc"]["VpcId"]
    ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")
    browser.get(vireod.url + "/console/")
    wait(browser, EC.presence_of_element_located((By.ID, "signin-form")))
    shot(browser, shots, "00-sign-in")
    signed_in(browser, vireod)
    cookies = browser.get_cookies()
    assert [c["name"] for c in cookies] == ["vireo_console"]
    c = cookies[0]
    assert c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/console"
    assert "expiry" in c, "the cookie has an expiry"
    assert browser.execute_script("return document.cookie") == "", "HttpOnly: scripts cannot read it"
    assert vireod.key_id in browser.find_element(By.ID, "account").text
    shot(browser, shots, "02-instances")

    page(browser, vireod, "launch", (By.ID, "launch-form"))
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#launch-type option")) > 10)
    types = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#launch-type option")]
    assert any(t.startswith("t3.micro") and "2 vCPUs" in t and "1024 MiB" in t for t in types), types
    keys = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#launch-key option")]
    assert "console-demo" in keys
    shot(browser, shots, "03-launch")

    page(browser, vireod, "images", (By.TAG_NAME, "table"))
    for img in ec2.describe_images(Owners=["self"])["Images"]:
        wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-image-id="{img["ImageId"]}"]')))
    shot(browser, shots, "04-images")

    page(browser, vireod, "instance-types", (By.TAG_NAME, "table"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    api_types = ec2.describe_instance_types()["InstanceTypes"]
    assert len(rows) == len(api_types)
    shot(browser, shots, "05-instance-types")

    page(browser, vireod, "key-pairs", (By.ID, "key-rows"))
    wait(browser, lambda b: "console-demo" in b.find_element(By.ID, "key-rows").text)
    shot(browser, shots, "06-key-pairs")

    page(browser, vireod, "vpcs", (By.CSS_SELECTOR, f'tr[data-vpc-id="{vpc}"]'))
    assert "10.42.0.0/16" in browser.find_element(By.CSS_SELECTOR, f'tr[data-vpc-id="{vpc}"]').text
    shot(browser, shots, "07-vpcs")

    page(browser, vireod, "security-groups", (By.TAG_NAME, "h2"))
    assert vpc in browser.find_element(By.ID, "main").text
    shot(browser, shots, "08-security-groups")


def test_a_tag_value_of_markup_is_shown_as_text_and_runs_nothing(vireod, ec2, browser, shots):
    vpc = ec2.create_vpc(CidrBlock="10.43.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": XSS}]}])["Vpc"]["VpcId"]
    images = ec2.describe_images(Owners=["self"])["Images"]
    if images:
        ec2.create_tags(Resources=[images[0]["ImageId"]], Tags=[{"Key": "note", "Value": XSS}])
    signed_in(browser, vireod)
    row = page(browser, vireod, "vpcs", (By.CSS_SELECTOR, f'tr[data-vpc-id="{vpc}"]'))
    tag = row.find_element(By.CSS_SELECTOR, "td.tags .tag")
    assert tag.text == "Name=" + XSS, "the value is shown, character for character"
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == [], "no element was made from it"
    assert browser.execute_script("return window.__vireoXss === undefined") is True
    assert browser.title != "pwned"
    shot(browser, shots, "09-tag-as-text")
    if images:
        page(browser, vireod, "images", (By.CSS_SELECTOR, f'tr[data-image-id="{images[0]["ImageId"]}"]'))
        assert XSS in browser.find_element(By.ID, "main").text
        assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
        assert browser.execute_script("return window.__vireoXss === undefined") is True


FETCH = """
const [url, body, headers, mode, done] = arguments;
fetch(url, {method: 'POST', credentials: 'include', mode, headers, body})
  .then(r => done(mode === 'no-cors' ? 'opaque' : r.status))
  .catch(e => done('failed: ' + e));
"""


FORM = """
const f = document.createElement('form');
f.method = 'POST';
f.action = arguments[0];
f.enctype = 'text/plain';
const i = document.createElement('input');
i.name = '{"key_name":"csrf-foreign","x":"';
i.value = '"}';
f.append(i);
document.body.append(f);
f.submit();
"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>another origin</title><p>another origin</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_origin():
    """A page on another origin (same host, another port: the same site, so SameSite lets the
    cookie go; only the Origin check and the CSRF token stand in the way)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def test_changes_without_the_token_or_from_another_origin_are_refused(vireod, ec2, browser, other_origin):
    signed_in(browser, vireod)
    api = vireod.url + "/console/api/key-pairs"
    json = {"Content-Type": "application/json"}
    # Same origin, no token.
    status = browser.execute_async_script(FETCH, api, '{"key_name":"csrf-no-token"}', json, "same-origin")
    assert status == 403
    # Same origin, a made-up token.
    status = browser.execute_async_script(
        FETCH, api, '{"key_name":"csrf-bad-token"}', {**json, "X-CSRF-Token": "0" * 64}, "same-origin")
    assert status == 403
    # Another origin: a form posted from its page (a top-level navigation, which carries the
    # cookie; the page cannot know the token). The answer is shown in the browser.
    browser.get(other_origin)
    browser.execute_script(FORM, api)
    wait(browser, lambda b: b.current_url.startswith(vireod.url))
    body = wait(browser, EC.presence_of_element_located((By.TAG_NAME, "body"))).text
    assert "CsrfRefused" in body and "another origin" in body, body
    browser.get(other_origin)
    # Another origin asking with the header needs CORS, which vireod does not grant.
    status = browser.execute_async_script(FETCH, api, '{"key_name":"csrf-foreign-cors"}', {**json, "X-CSRF-Token": "0" * 64}, "cors")
    assert str(status).startswith("failed"), status
    names = {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    assert not names & {"csrf-no-token", "csrf-bad-token", "csrf-foreign", "csrf-foreign-cors"}, names
    # The page itself, with its token, can.
    browser.get(vireod.url + "/console/#/instances")
    wait(browser, EC.presence_of_element_located((By.ID, "instances")))
    token = browser.execute_script("return S.csrf")
    status = browser.execute_async_script(
        FETCH, api, '{"key_name":"csrf-with-token","key_type":"ed25519"}', {**json, "X-CSRF-Token": token}, "same-origin")
    assert status == 200
    assert "csrf-with-token" in {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    ec2.delete_key_pair(KeyName="csrf-with-token")


def test_create_a_key_pair_shows_its_private_key_once(vireod, ec2, browser, shots):
    signed_in(browser, vireod)
    page(browser, vireod, "key-pairs", (By.ID, "key-form"))
    browser.find_element(By.ID, "key-name").send_keys("made-in-the-browser")
    browser.find_element(By.ID, "key-create").click()
    key = wait(browser, EC.presence_of_element_located((By.ID, "private-key")))
    assert "BEGIN OPENSSH PRIVATE KEY" in key.get_attribute("value")
    wait(browser, lambda b: "made-in-the-browser" in b.find_element(By.ID, "key-rows").text)
    pairs = ec2.describe_key_pairs(KeyNames=["made-in-the-browser"])["KeyPairs"]
    assert pairs[0]["KeyType"] == "ed25519"
    shot(browser, shots, "10-key-pair-created")
    # Drawn again, the page has no private key: vireod keeps none.
    browser.refresh()
    wait(browser, EC.presence_of_element_located((By.ID, "key-form")))
    wait(browser, lambda b: "made-in-the-browser" in b.find_element(By.ID, "key-rows").text)
    assert browser.find_elements(By.ID, "private-key") == []


def test_sign_out_ends_the_session(vireod, browser):
    signed_in(browser, vireod)
    browser.find_element(By.ID, "signout").click()
    wait(browser, EC.presence_of_element_located((By.ID, "signin-form")))
    assert browser.get_cookies() == []
    browser.get(vireod.url + "/console/#/instances")
    wait(browser, EC.presence_of_element_located((By.ID, "signin-form")))
    assert browser.find_element(By.ID, "nav").is_displayed() is False
