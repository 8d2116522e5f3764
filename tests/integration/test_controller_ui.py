"""The controller's web UI in a real headless Chromium (Debian's chromium + chromium-driver, Selenium).

A person's path: log in, see both backends, toggle a feature, set a backend to standby through the
confirmation page and see the change, look a user up. Every step is checked against
`palomar cluster`, and a screenshot of each page is kept under tmp/artefacts/controller-ui/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from palomar.devcluster.cluster import SITE, LocalCluster

ARTEFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artefacts" / "controller-ui"
WAIT = 30


@pytest.fixture(scope="module")
def cluster(harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "controller-ui", controller=True, controller_http_port=0)
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium-driver is missing: run scripts/install-system-deps"
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(browser: webdriver.Chrome, name: str) -> None:
    browser.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def url(cluster: LocalCluster, path: str = "/") -> str:
    return f"http://{cluster.lb_host}:{cluster.controller_http_port}{path}"


def cli_json(cluster: LocalCluster, *args: str) -> object:
    return json.loads(cluster.cluster("--json", *args).stdout)


def login(browser: webdriver.Chrome, cluster: LocalCluster, user: str, password: str) -> None:
    browser.delete_all_cookies()
    browser.get(url(cluster, "/login"))
    browser.find_element(By.ID, "user").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()
    # after a failure the address's penalty delays the next check by seconds: wait for the answer page
    WebDriverWait(browser, WAIT).until(
        lambda b: b.find_elements(By.ID, "error") or b.find_elements(By.CSS_SELECTOR, "table.backends"))


def backend_status_cell(browser: webdriver.Chrome, host: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'table.backends tr[data-host="{host}"] td.status').text


def test_a_wrong_password_is_refused(browser: webdriver.Chrome, cluster: LocalCluster) -> None:
    login(browser, cluster, "admin", "not the password")
    assert "Wrong user name or password" in browser.find_element(By.ID, "error").text
    browser.get(url(cluster, "/"))
    assert browser.current_url.endswith("/login"), "the overview must not show without a session"
    shot(browser, "01-login-refused")


def test_admin_sees_both_backends_toggles_a_feature_and_sets_standby(browser: webdriver.Chrome,
                                                                     cluster: LocalCluster) -> None:
    login(browser, cluster, "admin", cluster.controller_admin_password)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.backends tr[data-host]")
    assert sorted(r.get_attribute("data-host") for r in rows) == sorted(b.host for b in cluster.backends)
    shot(browser, "02-overview")

    browser.find_element(By.ID, "feature-health-dryrun").click()
    WebDriverWait(browser, WAIT).until(lambda b: "feature health" in b.find_element(By.ID, "notice").text)
    state = browser.find_element(By.CSS_SELECTOR, 'table.features tr[data-feature="health"] td.state').text
    assert state == "dryrun"
    assert [f["state"] for f in cli_json(cluster, "feature", "list", SITE)  # type: ignore[union-attr]
            if f["feature"] == "health"] == ["dryrun"]
    shot(browser, "03-feature-dryrun")

    host = cluster.backends[1].host
    assert backend_status_cell(browser, host) == "online"
    row = browser.find_element(By.CSS_SELECTOR, f'table.backends tr[data-host="{host}"]')
    row.find_element(By.CSS_SELECTOR, 'select[name="status"] option[value="standby"]').click()
    row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # a click that submits a form does not wait for the next page: wait for the confirmation itself
    confirm = WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.ID, "confirm-text"))[0].text
    assert host in confirm and "online → standby" in confirm
    assert cli_json(cluster, "backend", "status", host)["status"] == "online", "nothing changes before confirming"  # type: ignore[index]
    shot(browser, "04-confirm-standby")
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, WAIT).until(lambda b: backend_status_cell(b, host) == "standby")
    assert cli_json(cluster, "backend", "status", host)["status"] == "standby"  # type: ignore[index]
    shot(browser, "05-standby")

    cluster.cluster("backend", "update", "--status", "online", host)
    cluster.cluster("feature", "set", SITE, "health", "on")


def test_user_lookup_and_the_load_chart(browser: webdriver.Chrome, cluster: LocalCluster) -> None:
    login(browser, cluster, "viewer", cluster.controller_readonly_password)
    assert not browser.find_elements(By.ID, "feature-health-off"), "the readonly role sees no toggles"
    WebDriverWait(browser, WAIT).until(
        lambda b: b.get(url(cluster, "/")) or b.find_elements(By.CSS_SELECTOR, "svg.chart polyline"))
    shot(browser, "06-readonly-overview-chart")
    user = cluster.users[2].name
    browser.get(url(cluster, "/user"))
    browser.find_element(By.ID, "lookup-name").send_keys(user)
    browser.find_element(By.ID, "lookup").click()
    expected = cli_json(cluster, "user", "access", "-u", user)[0]["backend"]  # type: ignore[index]
    where = WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.ID, "where"))[0].text
    assert expected in where
    shot(browser, "07-user-lookup")


def test_html_in_names_is_shown_as_text(browser: webdriver.Chrome, cluster: LocalCluster) -> None:
    login(browser, cluster, "viewer", cluster.controller_readonly_password)
    hostile = '<script>document.title="owned"</script><img src=x id=injected>'
    browser.get(url(cluster, "/user?name=" + hostile.replace("<", "%3C").replace(">", "%3E")
                    .replace('"', "%22").replace("=", "%3D").replace(" ", "%20")))
    assert browser.title != "owned" and not browser.find_elements(By.ID, "injected")
    assert '<img src=x id=injected>' in browser.find_element(By.TAG_NAME, "h2").text
    shot(browser, "08-hostile-name")
