#!/usr/bin/python3
"""Drives the Backing Image page of a running `bifs serve` in headless Chromium (WebDriver).

Run by tests/it/browser.rs, which starts the server and passes:
  BIFS_URL         the server's base URL (http://127.0.0.1:PORT)
  BIFS_TOKEN       the bearer token the server wants for writes
  BIFS_SOURCE      a local raw image file to create the first image from (served here over
                   http://127.0.0.1, the way Longhorn downloads)
  BIFS_UPLOAD      a local file to upload through the dialog
  BIFS_PASSPHRASE  the passphrase of the loaded Secret
  BIFS_SECRET      NAMESPACE/NAME of the loaded Secret
  BIFS_SHOTS       directory for the screenshots
  BIFS_WORK        scratch directory (downloads)
Everything is found the way a person (or a screen reader) finds it: by label text, button text,
option text and the state words Longhorn shows. Exits non-zero with a message on any failure.
"""

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["BIFS_URL"].rstrip("/")
TOKEN = os.environ["BIFS_TOKEN"]
SOURCE = os.environ["BIFS_SOURCE"]
UPLOAD = os.environ["BIFS_UPLOAD"]
PASSPHRASE = os.environ["BIFS_PASSPHRASE"]
SECRET_NS, SECRET_NAME = os.environ["BIFS_SECRET"].split("/", 1)
SHOTS = os.environ["BIFS_SHOTS"]
WORK = os.environ["BIFS_WORK"]
TIMEOUT = 90


def step(msg):
    print(f"browser: {msg}", flush=True)


def start_browser(width, height):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    # The window size includes the browser's frame, and headless Chromium keeps windows at least
    # 500px wide: set the page's viewport itself, so screenshots are exactly width x height.
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return d


def shot(d, name):
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, f"{name}.png")
    d.save_screenshot(path)
    step(f"screenshot {path}")


def wait(d, cond, what, timeout=TIMEOUT):
    def safe(drv):
        try:
            return cond(drv)
        except StaleElementReferenceException:
            return False
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.2).until(safe)
    except Exception:
        shot(d, "failure")
        raise AssertionError(f"timed out waiting for {what}")


def field(d, label_text):
    """The control whose <label for=…> text is exactly `label_text`, inside the open dialog."""
    labels = [l for l in d.find_elements(By.XPATH, f"//dialog[@open]//label[normalize-space()='{label_text}']")
              if l.is_displayed()]
    assert len(labels) == 1, f"expected one visible label {label_text!r}, found {len(labels)}"
    return d.find_element(By.ID, labels[0].get_attribute("for"))


def choose(select_el, prefix):
    """Selects the option whose text begins with `prefix`."""
    s = Select(select_el)
    for o in s.options:
        if o.text.strip().startswith(prefix):
            s.select_by_visible_text(o.text)
            return
    raise AssertionError(f"no option beginning with {prefix!r} in {[o.text for o in s.options]}")


def button(d, text, scope=None):
    root = scope or d
    xp = f".//button[normalize-space()='{text}']" if scope else f"//dialog[@open]//button[normalize-space()='{text}']"
    els = [b for b in root.find_elements(By.XPATH, xp) if b.is_displayed()]
    assert els, f"no visible button {text!r}"
    return els[0]


def row(d, name):
    rows = d.find_elements(By.CSS_SELECTOR, f"#images tbody tr[data-name='{name}']")
    return rows[0] if rows else None


def state(d, name):
    r = row(d, name)
    return r.find_element(By.CSS_SELECTOR, "td.state .badge").text.strip() if r else None


def open_dialog_or_token(d):
    """After OK: the server may ask for the token first (401); give it once."""
    tok = d.find_elements(By.ID, "token-dialog")
    if tok and tok[0].get_attribute("open") is not None:
        field(d, "Token").send_keys(TOKEN)
        button(d, "OK").click()
        return True
    return False


def submit_create(d):
    button(d, "OK").click()
    dlg = d.find_element(By.ID, "create-dialog")

    def done(drv):
        open_dialog_or_token(drv)
        if dlg.get_attribute("open") is None:
            return "closed"
        err = drv.find_element(By.ID, "create-error")
        if err.is_displayed() and err.text.strip():
            return "error"
        return False
    return wait(d, done, "the create dialog to close or show an error")


def api(path):
    req = urllib.request.Request(URL + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def download(href, dst):
    req = urllib.request.Request(href, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=120) as r, open(dst, "wb") as f:
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            f.write(b)


def test_passphrase(path):
    p = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", path],
                       input=PASSPHRASE.encode(), capture_output=True)
    assert p.returncode == 0, f"cryptsetup open --test-passphrase {path}: {p.stderr.decode()}"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_source():
    """A plain HTTP server on loopback for the source image: the "local URL" to download from."""
    handler = functools.partial(QuietHandler, directory=os.path.dirname(SOURCE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}/{os.path.basename(SOURCE)}"


def main():
    httpd, source_url = serve_source()
    d = start_browser(1280, 800)
    try:
        run(d, source_url)
    finally:
        d.quit()
        httpd.shutdown()
    narrow()
    print("browser: all steps passed", flush=True)


def run(d, source_url):
    d.get(URL + "/")
    # The server wants its token for reads too: the page asks for it once.
    wait(d, lambda drv: open_dialog_or_token(drv) or drv.find_element(By.ID, "live").text == "live",
         "the token dialog or the status stream")
    wait(d, lambda drv: drv.find_element(By.ID, "live").text == "live", "the status stream to connect")
    # A marker that a reload would wipe: everything below must happen without one.
    d.execute_script("window.__noReload = 42;")

    step(f"create a download image from {source_url}")
    button(d, "Create Backing Image", scope=d.find_element(By.TAG_NAME, "main")).click()
    field(d, "Name").send_keys("base")
    choose(field(d, "Created From"), "Download From URL")
    field(d, "URL").send_keys(source_url)
    assert submit_create(d) == "closed", d.find_element(By.ID, "create-error").text
    wait(d, lambda drv: state(drv, "base") == "ready", "base to be ready")
    with open(SOURCE, "rb") as f:
        want = hashlib.sha512(f.read()).hexdigest()
    got = api("/api/v1/backingimages/base")["status"].get("checksum")
    assert got == want, f"base's checksum {got} is not the source's {want}"

    step("clone it with Encryption: Encrypt and the Secret")
    button(d, "Clone", scope=row(d, "base")).click()
    field(d, "Name").send_keys("base-encrypted")
    assert Select(field(d, "Created From")).first_selected_option.text.startswith("Clone From Existing Backing Image")
    assert Select(field(d, "Source Backing Image")).first_selected_option.text == "base"
    choose(field(d, "Encryption"), "Encrypt")
    choose(field(d, "Secret"), SECRET_NAME)
    choose(field(d, "Secret Namespace"), SECRET_NS)
    shot(d, "02-clone-dialog")
    assert submit_create(d) == "closed", d.find_element(By.ID, "create-error").text
    seen = set()

    def ready(drv):
        s = state(drv, "base-encrypted")
        if s:
            seen.add(s)
        return s == "ready"
    wait(d, ready, "base-encrypted to be ready")
    step(f"base-encrypted went through {sorted(seen)}")
    lock = row(d, "base-encrypted").find_elements(By.CSS_SELECTOR, "[aria-label='Encrypted']")
    assert lock, "no lock icon on the encrypted image"
    assert d.execute_script("return window.__noReload") == 42, "the page reloaded"

    step("download the encrypt view from its link and test the passphrase with cryptsetup")
    r = row(d, "base")
    r.find_element(By.XPATH, ".//summary[normalize-space()='Download']").click()
    links = [a for a in r.find_elements(By.TAG_NAME, "a") if a.text.startswith("Encrypt with")]
    assert links, "no Encrypt download link on base"
    href = links[0].get_attribute("href")
    shot(d, "03-download-menu")
    r.find_element(By.XPATH, ".//summary[normalize-space()='Download']").click()
    enc = os.path.join(WORK, "base.encrypt.img")
    download(href, enc)
    test_passphrase(enc)
    step(f"{href}: cryptsetup accepts the passphrase")
    # The clone's own bytes (its Ignore view) are a LUKS2 image for the same passphrase.
    r = row(d, "base-encrypted")
    r.find_element(By.XPATH, ".//summary[normalize-space()='Download']").click()
    ign = [a for a in r.find_elements(By.TAG_NAME, "a") if a.text.startswith("Ignore")]
    assert ign, "no Ignore download link on base-encrypted"
    clone = os.path.join(WORK, "base-encrypted.img")
    download(ign[0].get_attribute("href"), clone)
    r.find_element(By.XPATH, ".//summary[normalize-space()='Download']").click()
    test_passphrase(clone)

    step("upload a file")
    button(d, "Create Backing Image", scope=d.find_element(By.TAG_NAME, "main")).click()
    field(d, "Name").send_keys("uploaded")
    choose(field(d, "Created From"), "Upload From Local")
    field(d, "File").send_keys(UPLOAD)
    with open(UPLOAD, "rb") as f:
        want = hashlib.sha512(f.read()).hexdigest()
    field(d, "Expected Checksum").send_keys(want)
    assert submit_create(d) == "closed", d.find_element(By.ID, "create-error").text
    wait(d, lambda drv: state(drv, "uploaded") == "ready", "uploaded to be ready")
    got = api("/api/v1/backingimages/uploaded")["status"]
    assert got.get("checksum") == want, f"uploaded checksum {got.get('checksum')} != {want}"

    step("detail of the encrypted clone")
    row(d, "base-encrypted").find_element(By.XPATH, ".//button[normalize-space()='base-encrypted']").click()
    det = d.find_element(By.ID, "detail-dialog")
    wait(d, lambda drv: det.get_attribute("open") is not None, "the detail dialog")
    text = det.text
    for want_text in ("UUID", "Created From", "Expected SHA512 Checksum", "Current SHA512 Checksum",
                      "Verified", ".sha512"):
        assert want_text in text, f"detail lacks {want_text!r}:\n{text}"
    shot(d, "04-detail")
    button(d, "Close").click()

    step("Decrypt of a plain image is refused with the admission message")
    button(d, "Create Backing Image", scope=d.find_element(By.TAG_NAME, "main")).click()
    field(d, "Name").send_keys("base-decrypted")
    choose(field(d, "Created From"), "Clone From Existing Backing Image")
    choose(field(d, "Source Backing Image"), "base")
    choose(field(d, "Encryption"), "Decrypt")
    choose(field(d, "Secret"), SECRET_NAME)
    assert submit_create(d) == "error", "Decrypt of a plain image was not refused"
    msg = d.find_element(By.ID, "create-error").text
    assert "already decrypted" in msg and "encryption" in msg, f"unexpected refusal: {msg}"
    step(f"refused: {msg}")
    shot(d, "05-refusal")
    button(d, "Cancel").click()

    # The screenshot for the README: the table with its states.
    time.sleep(0.5)
    shot(d, "01-table")

    step("delete with a confirmation")
    for name in [n for n in ("base-decrypted", "uploaded") if row(d, n)]:
        button(d, "Delete", scope=row(d, name)).click()
        conf = d.find_element(By.ID, "confirm-dialog")
        wait(d, lambda drv: conf.get_attribute("open") is not None, "the confirmation")
        assert name in conf.text
        button(d, "OK").click()
        wait(d, lambda drv, n=name: row(drv, n) is None, f"{name} to disappear")
    names = [i["metadata"]["name"] for i in api("/api/v1/backingimages")["items"]]
    assert "uploaded" not in names, names
    assert d.execute_script("return window.__noReload") == 42, "the page reloaded"


def narrow():
    """The page on a narrow window: the table and the dialog still fit and work."""
    d = start_browser(420, 800)
    try:
        d.get(URL + "/")
        wait(d, lambda drv: open_dialog_or_token(drv) or state(drv, "base") == "ready",
             "the token dialog or the table")
        wait(d, lambda drv: state(drv, "base") == "ready", "the table on a narrow window")
        button(d, "Create Backing Image", scope=d.find_element(By.TAG_NAME, "main")).click()
        name = field(d, "Name")
        assert name.size["width"] > 150, f"the Name field is {name.size['width']}px wide"
        width = d.execute_script("return document.documentElement.scrollWidth")
        assert width <= 440, f"the page scrolls sideways at 420px ({width}px)"
        shot(d, "06-narrow-dialog")
        button(d, "Cancel").click()
    finally:
        d.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"browser: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
