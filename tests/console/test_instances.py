"""An instance's life in the console, in headless Chromium: launched from the form (the small
test guest of `make images`, which runs on this host's KVM), seen reaching running in the list
without a reload, its detail page following its console output to the guest's ready line (user
data that is markup shown as text), its tags edited in place (CreateTags' rules refusing a
reserved key), then stopped and terminated with confirmations.
"""

import os

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import GUEST
from test_console import shot, signed_in

USER_DATA = "<b id=injected>console-user-data</b>"


def wait(b, cond, timeout=60):
    return WebDriverWait(b, timeout, poll_frequency=0.2).until(cond)


@pytest.fixture(scope="module", autouse=True)
def needs_kvm_and_guest():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.fail("the instance flow launches a real VM and needs read/write access to /dev/kvm", pytrace=False)
    if not os.path.exists(os.path.join(GUEST, "testguest.json")):
        pytest.fail("build/guest/testguest.json is missing: run `make images`", pytrace=False)


def state_in_row(b, iid):
    return b.find_element(By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"] td.state-cell').text


def tags_of(ec2, iid):
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def detail_state(b):
    try:
        return b.find_element(By.CSS_SELECTOR, "#attributes span.state").text
    except Exception:  # redrawn between the find and the read
        return None


def confirm(b):
    wait(b, EC.visibility_of_element_located((By.ID, "confirm-ok"))).click()


def test_launch_watch_console_stop_terminate(vireod, ec2, browser, shots):
    signed_in(browser, vireod)
    # Launch from the form.
    browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="launch"]').click()
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#launch-image option")) >= 1
         and len(b.find_elements(By.CSS_SELECTOR, "#launch-type option")) > 10)
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["vireo-testguest"]}])["Images"][0]["ImageId"]
    Select(browser.find_element(By.ID, "launch-image")).select_by_value(image)
    Select(browser.find_element(By.ID, "launch-type")).select_by_value("t3.nano")
    browser.find_element(By.ID, "launch-user-data").send_keys(USER_DATA)
    browser.find_element(By.ID, "launch-button").click()
    link = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, '#status a[href^="#/instance/i-"]')))
    iid = link.text
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.nano"

    # The list follows the state without a reload: a marker set on the page survives.
    browser.find_element(By.CSS_SELECTOR, '#nav a[data-page="instances"]').click()
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"]')))
    browser.execute_script("window.__sameDocument = true")
    wait(browser, lambda b: state_in_row(b, iid) == "running")
    assert browser.execute_script("return window.__sameDocument === true")
    shot(browser, shots, "11-instance-running")
    # The filters: another state hides it, its own state and type show it.
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("stopped")
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"]'))
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("running")
    Select(browser.find_element(By.ID, "filter-type")).select_by_value("t3.nano")
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"]')))
    browser.find_element(By.ID, "filter-tag-key").send_keys("no-such-tag")
    browser.find_element(By.ID, "filter-apply").click()
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"]'))
    browser.find_element(By.ID, "filter-tag-key").clear()
    browser.find_element(By.ID, "filter-apply").click()
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"]')))

    # Its detail page, with the console output following the guest.
    browser.find_element(By.CSS_SELECTOR, f'tr[data-instance-id="{iid}"] a').click()
    out = wait(browser, EC.presence_of_element_located((By.ID, "console-output")))
    wait(browser, lambda b: "VIREO-TESTGUEST ready" in out.text)
    wait(browser, lambda b: "console-user-data" in out.text)
    assert USER_DATA in out.text, "the guest's output, user data included, is text"
    assert browser.find_elements(By.ID, "injected") == []
    assert "t3.nano (2 vCPUs, 512 MiB)" in browser.find_element(By.ID, "attributes").text
    # Tags edited in place: add one whose value is markup, change it, remove it.
    browser.find_element(By.ID, "new-tag-key").send_keys("Name")
    browser.find_element(By.ID, "new-tag-value").send_keys("<i id=italic>web</i>")
    browser.find_element(By.ID, "tag-add").click()
    row = '#tag-editor tr[data-tag-key="Name"]'
    value = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, row + " input.tag-value")))
    assert value.get_attribute("value") == "<i id=italic>web</i>"
    assert browser.find_elements(By.ID, "italic") == []
    assert tags_of(ec2, iid) == {"Name": "<i id=italic>web</i>"}
    wait(browser, lambda b: "<i id=italic>web</i>" in b.find_element(By.ID, "attributes").text)
    value.clear()
    value.send_keys("web-1")
    browser.find_element(By.CSS_SELECTOR, row + " button.tag-save").click()
    wait(browser, lambda b: tags_of(ec2, iid) == {"Name": "web-1"})
    browser.find_element(By.ID, "new-tag-key").send_keys("aws:reserved")
    browser.find_element(By.ID, "tag-add").click()
    wait(browser, lambda b: "InvalidParameterValue" in b.find_element(By.ID, "status").text)
    assert tags_of(ec2, iid) == {"Name": "web-1"}
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, shots, "12-instance-detail")
    browser.find_element(By.CSS_SELECTOR, row + " button.tag-remove").click()
    wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, row))
    assert tags_of(ec2, iid) == {}
    browser.execute_script("arguments[0].scrollIntoView()", out)
    shot(browser, shots, "13-instance-console-output")

    # Stop, with a confirmation naming the instance.
    browser.find_element(By.ID, "action-stop").click()
    assert iid in wait(browser, EC.visibility_of_element_located((By.ID, "confirm-list"))).text
    confirm(browser)
    wait(browser, lambda b: detail_state(b) == "stopped", timeout=90)
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped"

    # Cancel leaves it be; confirm terminates it.
    browser.find_element(By.ID, "action-terminate").click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm-cancel"))).click()
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped"
    browser.find_element(By.ID, "action-terminate").click()
    confirm(browser)
    wait(browser, lambda b: detail_state(b) == "terminated", timeout=90)
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    shot(browser, shots, "14-instance-terminated")
