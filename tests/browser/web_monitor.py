#!/usr/bin/python3
"""The web monitor in a real browser (`make browser`).

Starts a coordinator with a farm token and its HTTP port, and a worker running the tiny VGG
(engine/tests/data), from the binaries `make test` built (target/debug). Then headless Chromium,
driven over WebDriver (Debian's chromium and chromium-driver, python3-selenium):

1. signs in with the token (asked once by the page),
2. drops a content and a style image on the Submit form, asks for the dry run, submits,
3. on the job's page sees a preview within 2 s of the task starting (on the page), new
   previews at least every 2 s, the iteration advance and the loss plot grow,
4. saves a screenshot of the job view (target/web-monitor.png), and reloaded, plots the
   losses from before it was opened,
5. submits a second job, which waits behind the first, and cancels it from the Jobs page.

Bounded: every wait has a deadline, the whole run takes well under two minutes.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
BIN = os.environ.get("STYLEFARM_BIN", os.path.join(TARGET, "debug"))
TOKEN = "browser-test-token-4d1f0b"
SCREENSHOT = os.path.join(TARGET, "web-monitor.png")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout, every=0.05):
    """Polls `check` until it returns something true; fails the test after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} (waited {timeout} s)")
        time.sleep(every)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def main():
    work = tempfile.mkdtemp(prefix="stylefarm-browser-")
    grpc, http = free_port(), free_port()
    env = dict(os.environ, STYLEFARM_TOKEN=TOKEN, RUST_LOG="warn")
    logs = open(os.path.join(work, "farm.log"), "w")
    procs = [
        subprocess.Popen(
            [
                os.path.join(BIN, "stylefarm-coordinator"),
                "--listen", f"127.0.0.1:{grpc}",
                "--http-listen", f"127.0.0.1:{http}",
                "--data-dir", os.path.join(work, "farm"),
            ],
            env=env, stdout=logs, stderr=logs,
        )
    ]
    base = f"http://127.0.0.1:{http}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200
        except OSError:
            return False

    driver = None
    try:
        wait_for("the coordinator serves HTTP", healthy, 20, 0.1)
        procs.append(
            subprocess.Popen(
                [
                    os.path.join(BIN, "stylefarm-worker"),
                    "--coordinator", f"http://127.0.0.1:{grpc}",
                    "--weights", os.path.join(ROOT, "engine", "tests", "data", "tiny_vgg16.safetensors"),
                    "--threads", "1",
                    "--name", "studio-node-1",
                    "--cache-dir", os.path.join(work, "cache"),
                ],
                env=env, stdout=logs, stderr=logs,
            )
        )
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1480,1180", "--hide-scrollbars"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.set_page_load_timeout(20)
        try:
            run(driver, base)
        except AssertionError as e:
            failed = os.path.join(TARGET, "web-monitor-failure.png")
            driver.save_screenshot(failed)
            print(f"page at failure ({failed}):\n{driver.find_element(By.TAG_NAME, 'body').text}")
            for entry in driver.get_log("browser"):
                print(f"console: {entry['message']}")
            sys.exit(f"FAIL: {e}")
        print("PASS: the web monitor in headless Chromium")
    finally:
        if driver is not None:
            driver.quit()
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


def run(driver, base):
    # 1. The page asks for the token once.
    driver.get(f"{base}/#/submit")
    token = wait_for("the sign-in dialog", lambda: visible(driver, "#token"), 10)
    token.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for("the submit form after signing in", lambda: visible(driver, "#submit-form"), 10)
    assert not visible(driver, "#token"), "the dialog closes once signed in"

    # 2. The form: images dropped (through the file inputs), settings, dry run, submit.
    fill_form(driver, "studio test", iterations=100000)
    driver.find_element(By.ID, "plan-button").click()
    plan = wait_for("the dry-run plan", lambda: text_of(driver, "#plan"), 15)
    assert "1 task" in plan and "peak memory" in plan, plan
    # The page is one document: the probe set up now sees the job's page too.
    install_probe(driver)
    driver.find_element(By.ID, "submit-button").click()
    wait_for("the job's page", lambda: "#/job/" in driver.current_url, 15)
    first_job = driver.current_url.split("#/job/")[1]

    # 3. Time to first picture, measured in the page: from the task first shown leased or
    # running to its preview loaded (and, more loosely, from the click on Submit).
    probe = wait_for("a preview on the page", lambda: js(driver, "return window.__probe.picture && window.__probe"), 15)
    started, picture, clicked = probe["started"], probe["picture"], probe["clicked"]
    print(f"task shown started -> preview shown: {(picture - started) / 1000:.2f} s; "
          f"Submit clicked -> preview shown: {(picture - clicked) / 1000:.2f} s")
    assert picture - started <= 2000, f"the first preview took {(picture - started) / 1000:.2f} s"
    assert picture - clicked <= 5000, f"the first preview took {(picture - clicked) / 1000:.2f} s after Submit"

    # Iterations advance, previews keep coming (at least every 2 s), the plot grows.
    it0 = int(attr(driver, "#progress", "data-iteration"))
    points0 = int(attr(driver, "#loss-plot", "data-points"))
    time.sleep(6)
    it1 = int(attr(driver, "#progress", "data-iteration"))
    points1 = int(attr(driver, "#loss-plot", "data-points"))
    probe = js(driver, "return window.__probe")
    changes = probe["changes"]
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    print(f"iteration {it0} -> {it1}, plot points {points0} -> {points1}, "
          f"{len(changes)} previews, longest gap {max(gaps or [0]) / 1000:.2f} s")
    assert it1 > it0, "the iteration advances"
    assert points1 > points0 and points1 >= 3, "the loss plot grows"
    assert len(changes) >= 3 and max(gaps) <= 2000, f"previews every 2 s at most: {gaps}"
    state = attr(driver, ".task", "data-state")
    assert state == "running", state

    # 4. The job view, for a person to look at.
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    driver.save_screenshot(SCREENSHOT)
    print(f"screenshot: {SCREENSHOT}")

    # 4b. Opened again mid-run, the page draws the losses from before it was opened (the
    # coordinator's history of the running task), not a plot that starts over at one point.
    driver.refresh()
    first = int(wait_for("the loss plot after reloading",
                         lambda: int(attr(driver, "#loss-plot", "data-points") or 0), 10, every=0.02))
    print(f"plot points on reopening the page: {first} (had {points1})")
    assert first >= min(10, points1), f"the reopened page plots {first} point(s), not the history"

    # 5. A second job waits behind the first (one worker); cancel it from the Jobs page.
    driver.get(f"{base}/#/submit")
    wait_for("the submit form", lambda: visible(driver, "#submit-form"), 10)
    fill_form(driver, "to be canceled", iterations=50)
    driver.find_element(By.ID, "submit-button").click()
    wait_for("the second job's page", lambda: "#/job/" in driver.current_url and first_job not in driver.current_url, 15)
    second = driver.current_url.split("#/job/")[1]
    driver.get(f"{base}/#/jobs")
    row = f'#jobs tr[data-job-id="{second}"]'
    click(driver, "the second job's cancel button", f"{row} button.cancel", 10)
    wait_for("the second job shown canceled", lambda: attr(driver, row, "data-state") == "canceled", 10)
    # The first job goes on; stop it too, from its own page.
    driver.get(f"{base}/#/job/{first_job}")
    click(driver, "the first job's cancel button", ".actions button.cancel", 10)
    wait_for("the first job shown canceled", lambda: attr(driver, "#job-state .badge", "data-state") == "canceled", 10)


def fill_form(driver, name, iterations):
    images = os.path.join(ROOT, "examples")
    driver.find_element(By.CSS_SELECTOR, "input[name=content]").send_keys(os.path.join(images, "tubingen.jpg"))
    driver.find_element(By.CSS_SELECTOR, "input[name=styles]").send_keys(os.path.join(images, "starry_night.jpg"))
    for field, value in (("name", name), ("image_size", "160"), ("num_iterations", str(iterations))):
        e = driver.find_element(By.CSS_SELECTOR, f"#submit-form input[name={field}]")
        e.clear()
        e.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "select[name=init] option[value=content]").click()
    wait_for("the dropped images' thumbnails", lambda: len(driver.find_elements(By.CSS_SELECTOR, ".thumbs img")) >= 2, 5)


def install_probe(driver):
    """Records, in page time, when a task is first shown started and each new preview."""
    js(driver, """
      window.__probe = { clicked: null, started: null, picture: null, changes: [] };
      document.getElementById('submit-button').addEventListener('click', () => {
        window.__probe.clicked = performance.now();
      });
      let last = null;
      setInterval(() => {
        const p = window.__probe;
        if (p.started === null && document.querySelector('.task[data-state="leased"], .task[data-state="running"]')) {
          p.started = performance.now();
        }
        const img = document.getElementById('preview-img');
        const sha = img && img.complete && img.naturalWidth > 0 ? img.dataset.sha : null;
        if (sha && sha !== last) {
          last = sha;
          if (p.picture === null) p.picture = performance.now();
          p.changes.push(performance.now());
        }
      }, 20);
    """)


def visible(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found and found[0].is_displayed() else None


def text_of(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found and "dry run" in found[0].text.lower() else ""


def attr(driver, css, name):
    # In the page, in one step: the lists are redrawn every 2 s, elements go stale.
    return js(driver, "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);", css, name)


def click(driver, what, css, timeout):
    """Clicks `css` once it shows, again if the page redrew it in between."""
    def attempt():
        try:
            found = visible(driver, css)
            if found:
                found.click()
                return True
        except StaleElementReferenceException:
            pass
        return False
    wait_for(what, attempt, timeout)


if __name__ == "__main__":
    main()
