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
  BIFS_BIN         the bifs binary (for `bifs get -o yaml` of what the page created)
  BIFS_STORE       the server's store
Everything is found the way a person (or a screen reader) finds it: by label text, button text,
option text and the state words Longhorn shows. Exits non-zero with a message on any failure.

The dialog is checked against longhorn-ui's src/routes/backingImage/CreateBackingImage.js: its
Created From options, Encryption options and default, required messages, Minimum Number of
Copies, Data Engine, Node Tag and Disk Tag.
"""

import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["BIFS_URL"].rstrip("/")
TOKEN = os.environ["BIFS_TOKEN"]
SOURCE = os.environ["BIFS_SOURCE"]
UPLOAD = os.environ["BIFS_UPLOAD"]
PASSPHRASE = os.environ["BIFS_PASSPHRASE"]
SECRET_NS, SECRET_NAME = os.environ["BIFS_SECRET"].split("/", 1)
SHOTS = os.environ["BIFS_SHOTS"]
WORK = os.environ["BIFS_WORK"]
BIN = os.environ.get("BIFS_BIN", "")
STORE = os.environ.get("BIFS_STORE", "")
TIMEOUT = 90

# Longhorn's longest name (datastore.NameMaximumLength): the layout must hold it at 1280 px.
LONG_NAME = "ubuntu-24.04-server-cloudimg-amd64-luks2"
assert len(LONG_NAME) == 40

# longhorn-ui CreateBackingImage.js, in its order.
LONGHORN_CREATED_FROM = ["Download From URL", "Upload From Local", "Export From a Longhorn Volume",
                         "Clone From Existing Backing Image"]
LONGHORN_ENCRYPTION = ["encrypt", "decrypt", "ignore (simply copy the backing image)"]


def step(msg):
    print(f"browser: {msg}", flush=True)


def start_browser(width, height):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    viewport(d, width, height)
    return d


def viewport(d, width, height):
    # The window size includes the browser's frame, and headless Chromium keeps windows at least
    # 500px wide: set the page's viewport itself, so screenshots are exactly width x height.
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


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


def visible_labels(d):
    return [l.text.strip().rstrip(":") for l in d.find_elements(By.XPATH, "//dialog[@open]//label")
            if l.is_displayed()]


def field_error(d, label_text):
    """The message the field points to with aria-describedby, if one is shown."""
    ids = (field(d, label_text).get_attribute("aria-describedby") or "").split()
    for i in ids:
        for e in d.find_elements(By.ID, i):
            if "field-error" in (e.get_attribute("class") or "") and e.is_displayed():
                return e.text.strip()
    return ""


def create_error(d):
    e = d.find_element(By.ID, "create-error")
    return e.text.strip() if e.is_displayed() else ""


def choose(select_el, prefix):
    """Selects the option whose text begins with `prefix`."""
    s = Select(select_el)
    for o in s.options:
        if o.text.strip().startswith(prefix):
            s.select_by_visible_text(o.text)
            return
    raise AssertionError(f"no option beginning with {prefix!r} in {[o.text for o in s.options]}")


def options(select_el):
    return [o.text.strip() for o in Select(select_el).options]


def selected(select_el):
    return Select(select_el).first_selected_option.text.strip()


def retype(input_el, text):
    input_el.clear()
    input_el.send_keys(text)


def button(d, text, scope=None):
    root = scope or d
    xp = f".//button[normalize-space()='{text}']" if scope else f"//dialog[@open]//button[normalize-space()='{text}']"
    els = [b for b in root.find_elements(By.XPATH, xp) if b.is_displayed()]
    assert els, f"no visible button {text!r}"
    return els[0]


def main_button(d, text):
    return button(d, text, scope=d.find_element(By.TAG_NAME, "main"))


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
        if create_error(drv):
            return "error"
        return False
    return wait(d, done, "the create dialog to close or show an error")


def api(path):
    req = urllib.request.Request(URL + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def api_create(name, spec):
    body = json.dumps({"apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
                       "metadata": {"name": name}, "spec": spec}).encode()
    req = urllib.request.Request(URL + "/api/v1/backingimages", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"POST {name}: {e.code} {e.read().decode()}")


def download(href, dst):
    req = urllib.request.Request(href, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=120) as r, open(dst, "wb") as f:
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            f.write(b)


def download_without_token(href, dst):
    """As Longhorn's client: no header of its own."""
    with urllib.request.urlopen(href) as resp, open(dst, "wb") as out:
        out.write(resp.read())


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


# ---- the Download menu ----

def menu(d):
    return d.find_element(By.ID, "download-menu")


def menu_open(d):
    return menu(d).is_displayed()


def menu_button(d, name):
    return row(d, name).find_element(By.XPATH, ".//button[normalize-space()='Download']")


def menu_links(d):
    return [a for a in menu(d).find_elements(By.CSS_SELECTOR, "[role='menuitem']") if a.is_displayed()]


def active(d):
    return d.switch_to.active_element


def fully_visible(d, e):
    """Inside the window and the topmost thing at its centre: nothing clips or covers it."""
    return d.execute_script("""
        const e = arguments[0], r = e.getBoundingClientRect();
        const vw = document.documentElement.clientWidth, vh = window.innerHeight;
        if (r.width === 0 || r.left < 0 || r.top < 0 || r.right > vw || r.bottom > vh) return false;
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return hit === e || e.contains(hit);""", e)


def check_menu_fully_visible(d, name, where):
    menu_button(d, name).click()
    wait(d, lambda drv: menu_open(drv), f"{name}'s Download menu ({where})")
    links = menu_links(d)
    assert links, f"{name}'s menu has no links"
    for a in links:
        assert fully_visible(d, a), f"{where}: {a.text!r} of {name}'s menu is cut off or covered"
    return links


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

    step("the Create dialog has Longhorn's fields, options, defaults and required messages")
    main_button(d, "Create Backing Image").click()
    src = field(d, "Created From")
    assert options(src) == LONGHORN_CREATED_FROM, options(src)
    assert selected(src) == "Download From URL", selected(src)
    want = ["Name", "Created From", "URL", "Expected Checksum", "Minimum Number of Copies", "Data Engine",
            "Node Tag", "Disk Tag"]
    assert visible_labels(d) == want, visible_labels(d)
    assert field(d, "Minimum Number of Copies").get_attribute("value") == "3"
    engine = field(d, "Data Engine")
    assert options(engine) == ["v1", "v2"] and selected(engine) == "v1", options(engine)
    button(d, "OK").click()
    assert field_error(d, "Name") == "Please input backing image name", field_error(d, "Name")
    assert field_error(d, "URL") == "Please input backing image url", field_error(d, "URL")
    assert d.find_element(By.ID, "create-dialog").get_attribute("open") is not None
    field(d, "Name").send_keys("base")
    assert field_error(d, "Name") == "", "the Name message stayed after the name was typed"
    assert field_error(d, "URL") == "Please input backing image url", "the URL message went too early"

    step("Export From a Longhorn Volume is shown and explained, and cannot be submitted")
    choose(field(d, "Created From"), "Export From a Longhorn Volume")
    note = d.find_element(By.ID, "volume-note")
    assert note.is_displayed() and "bifs cannot export a Longhorn volume" in note.text, note.text
    assert "engine" in note.text and "snapshot" in note.text, note.text
    assert "Volume Name" in visible_labels(d) and "Exported Backing Image Type" in visible_labels(d)
    assert not button(d, "OK").is_enabled(), "OK is enabled for an export from a volume"
    shot(d, "08-export-from-volume")

    step("an old error goes as soon as the field is changed (v2 refused, then v1)")
    choose(field(d, "Created From"), "Download From URL")
    assert button(d, "OK").is_enabled()
    field(d, "URL").send_keys(source_url)
    choose(field(d, "Data Engine"), "v2")
    assert submit_create(d) == "error", "Data Engine v2 was not refused"
    assert "v2 backing image is not supported" in create_error(d), create_error(d)
    choose(field(d, "Data Engine"), "v1")
    assert create_error(d) == "", f"the old error stayed after Data Engine changed: {create_error(d)!r}"

    step("Minimum Number of Copies, Node Tag and Disk Tag go into the manifest")
    retype(field(d, "Minimum Number of Copies"), "2")
    field(d, "Node Tag").send_keys("storage")
    field(d, "Disk Tag").send_keys("ssd, fast")
    d.find_element(By.XPATH, "//dialog[@open]//summary[normalize-space()='Manifest']").click()
    preview = d.find_element(By.ID, "create-manifest-text").text
    for line in ("name: base", "sourceType: download", "minNumberOfCopies: 2", "dataEngine: v1", "- storage",
                 "- ssd", "- fast"):
        assert line in preview, f"the manifest preview lacks {line!r}:\n{preview}"
    shot(d, "07-create-dialog")
    assert submit_create(d) == "closed", create_error(d)
    wait(d, lambda drv: state(drv, "base") == "ready", "base to be ready")
    with open(SOURCE, "rb") as f:
        want = hashlib.sha512(f.read()).hexdigest()
    got = api("/api/v1/backingimages/base")
    assert got["status"].get("checksum") == want, f"base's checksum {got['status'].get('checksum')} is not {want}"
    spec = got["spec"]
    assert (spec["minNumberOfCopies"], spec["dataEngine"], spec["nodeSelector"], spec["diskSelector"]) == \
        (2, "v1", ["storage"], ["ssd", "fast"]), spec
    if BIN and STORE:
        out = subprocess.run([BIN, "get", "--store", STORE, "-o", "yaml", "base"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        for line in ("minNumberOfCopies: 2", "dataEngine: v1", "- storage", "- ssd", "- fast"):
            assert line in out.stdout, f"`bifs get -o yaml base` lacks {line!r}:\n{out.stdout}"

    step("clone it: encrypt preselected, Secret and Secret Namespace typed (suggested, required)")
    button(d, "Clone", scope=row(d, "base")).click()
    field(d, "Name").send_keys("base-encrypted")
    assert selected(field(d, "Created From")) == "Clone From Existing Backing Image"
    assert selected(field(d, "Source Backing Image")) == "base"
    enc = field(d, "Encryption")
    assert options(enc)[:3] == LONGHORN_ENCRYPTION, options(enc)
    assert len(options(enc)) == 4 and options(enc)[3].startswith("rekey") and "bifs" in options(enc)[3], options(enc)
    assert selected(enc) == "encrypt", f"the clone's Encryption starts at {selected(enc)!r}, not encrypt"
    secret, ns = field(d, "Secret"), field(d, "Secret Namespace")
    assert secret.tag_name == "input" and ns.tag_name == "input", "Secret fields are not free text"
    suggested = d.execute_script(
        "return [...arguments[0].list.options].map(o => o.value)", secret)
    assert SECRET_NAME in suggested, f"{SECRET_NAME} is not suggested: {suggested}"
    button(d, "OK").click()
    assert field_error(d, "Secret") == "Please input secret name", field_error(d, "Secret")
    assert field_error(d, "Secret Namespace") == "Please input secret namespace", field_error(d, "Secret Namespace")
    secret.send_keys(SECRET_NAME, Keys.TAB)
    # A known Secret with one namespace fills the empty namespace (and clears its message).
    wait(d, lambda drv: ns.get_attribute("value") == SECRET_NS, "the Secret Namespace to be filled")
    assert field_error(d, "Secret") == "" and field_error(d, "Secret Namespace") == ""
    d.execute_script("document.activeElement.blur()")
    shot(d, "02-clone-dialog")
    assert submit_create(d) == "closed", create_error(d)
    seen = set()

    def ready(drv):
        s = state(drv, "base-encrypted")
        if s:
            seen.add(s)
        return s == "ready"
    wait(d, ready, "base-encrypted to be ready")
    step(f"base-encrypted went through {sorted(seen)}")
    lock = row(d, "base-encrypted").find_elements(By.CSS_SELECTOR, "[aria-label='Encrypted Backing Image']")
    assert lock, "no lock icon on the encrypted image"
    assert d.execute_script("return window.__noReload") == 42, "the page reloaded"

    step("download the encrypt view from the menu and test the passphrase with cryptsetup")
    menu_button(d, "base").click()
    wait(d, lambda drv: menu_open(drv), "base's Download menu")
    links = [a for a in menu_links(d) if a.text.startswith("Encrypt with")]
    assert links, "no Encrypt download link on base"
    href = links[0].get_attribute("href")
    shot(d, "03-download-menu")
    menu_button(d, "base").click()
    assert not menu_open(d), "a second click on Download did not close its menu"
    enc_path = os.path.join(WORK, "base.encrypt.img")
    download(href, enc_path)
    test_passphrase(enc_path)
    step(f"{href}: cryptsetup accepts the passphrase")
    # The clone's own bytes (its Ignore view) are a LUKS2 image for the same passphrase.
    menu_button(d, "base-encrypted").click()
    ign = [a for a in menu_links(d) if a.text.startswith("Ignore")]
    assert ign, "no Ignore download link on base-encrypted"
    clone = os.path.join(WORK, "base-encrypted.img")
    download(ign[0].get_attribute("href"), clone)
    d.find_element(By.TAG_NAME, "h1").click()
    assert not menu_open(d), "a click elsewhere did not close the menu"
    test_passphrase(clone)

    step("the menu's Longhorn item: a signed URL Longhorn can use without the token, and a manifest with its checksum")
    menu_button(d, "base").click()
    wait(d, lambda drv: menu_open(drv), "base's Download menu")
    lh = [b for b in menu_links(d) if b.tag_name == "button" and b.text.startswith("Encrypt with")]
    assert lh, "no Longhorn item for base's encrypt view"
    lh[0].click()
    wait(d, lambda drv: drv.find_element(By.ID, "longhorn-dialog").get_attribute("open") is not None,
         "the Longhorn dialog")
    wait(d, lambda drv: re.search(r"checksum: [0-9a-f]{128}", drv.find_element(By.ID, "longhorn-manifest").text),
         "the manifest's checksum")
    signed = d.find_element(By.ID, "longhorn-url").get_attribute("value")
    manifest = d.find_element(By.ID, "longhorn-manifest").text
    assert "?expires=" in signed and "&signature=" in signed and TOKEN not in signed, signed
    # The URL is quoted (it holds ? and &), as YAML wants it.
    for line in ("kind: BackingImage", "sourceType: download", f'url: "{signed}"', f"secret: {SECRET_NAME}",
                 f"secretNamespace: {SECRET_NS}"):
        assert line in manifest, f"the manifest lacks {line!r}:\n{manifest}"
    shot(d, "11-longhorn-dialog")
    lh_path = os.path.join(WORK, "base.longhorn.img")
    download_without_token(signed, lh_path)
    with open(lh_path, "rb") as f:
        got = hashlib.sha512(f.read()).hexdigest()
    assert f"checksum: {got}" in manifest, f"the manifest's checksum is not the download's {got}"
    test_passphrase(lh_path)
    button(d, "Close", scope=d.find_element(By.ID, "longhorn-dialog")).click()

    step("the menu by keyboard: opens on Enter with the first item focused, arrows move, Esc closes")
    btn = menu_button(d, "base")
    d.execute_script("arguments[0].focus()", btn)
    active(d).send_keys(Keys.ENTER)
    wait(d, lambda drv: menu_open(drv), "the menu to open on Enter")
    items = menu_links(d)
    assert active(d) == items[0], f"focus is on {active(d).text!r}, not the first item"
    assert btn.get_attribute("aria-expanded") == "true"
    active(d).send_keys(Keys.ARROW_DOWN)
    assert active(d) == items[1], "ArrowDown did not move to the second item"
    active(d).send_keys(Keys.ESCAPE)
    assert not menu_open(d), "Esc did not close the menu"
    assert active(d) == menu_button(d, "base"), "Esc did not return the focus to the Download button"
    assert menu_button(d, "base").get_attribute("aria-expanded") == "false"
    active(d).send_keys(Keys.ARROW_DOWN)
    wait(d, lambda drv: menu_open(drv), "the menu to open on ArrowDown")
    assert active(d) == menu_links(d)[0], "ArrowDown on the button did not focus the first item"
    active(d).send_keys(Keys.TAB)
    assert not menu_open(d), "Tab did not close the menu"
    assert active(d) == button(d, "Clone", scope=row(d, "base")), "Tab did not move on to the next control"

    step("an open menu stays open, with its focus, while other rows change")
    d.execute_script("arguments[0].focus()", menu_button(d, "base"))
    active(d).send_keys(Keys.ENTER)
    wait(d, lambda drv: menu_open(drv), "the menu to open again")
    active(d).send_keys(Keys.ARROW_DOWN)
    focused = active(d)
    d.execute_script("arguments[0].__kept = 1", focused)
    # A new image: its row appears and goes through its states, one status event each.
    api_create("base-copy", {"sourceType": "clone", "sourceParameters": {"backing-image": "base", "encryption": "ignore"}})
    wait(d, lambda drv: state(drv, "base-copy") == "ready", "the base-copy's row to be ready")
    time.sleep(0.5)
    assert menu_open(d), "the Download menu closed when another row changed"
    assert d.execute_script("return document.activeElement.__kept === 1"), \
        "the focused menu item was replaced or lost its focus"
    active(d).send_keys(Keys.ESCAPE)
    assert not menu_open(d)

    step("upload a file, with a Disk Tag and one copy")
    main_button(d, "Create Backing Image").click()
    field(d, "Name").send_keys("uploaded")
    choose(field(d, "Created From"), "Upload From Local")
    button(d, "OK").click()
    assert field_error(d, "File") == "Please upload backing image file", field_error(d, "File")
    field(d, "File").send_keys(UPLOAD)
    assert field_error(d, "File") == "", "the File message stayed after a file was chosen"
    with open(UPLOAD, "rb") as f:
        want = hashlib.sha512(f.read()).hexdigest()
    field(d, "Expected Checksum").send_keys(want)
    retype(field(d, "Minimum Number of Copies"), "1")
    field(d, "Disk Tag").send_keys("hdd")
    assert submit_create(d) == "closed", create_error(d)
    wait(d, lambda drv: state(drv, "uploaded") == "ready", "uploaded to be ready")
    got = api("/api/v1/backingimages/uploaded")
    assert got["status"].get("checksum") == want, f"uploaded checksum {got['status'].get('checksum')} != {want}"
    spec = got["spec"]
    assert (spec["minNumberOfCopies"], spec["diskSelector"], spec["nodeSelector"]) == (1, ["hdd"], []), spec
    # The page sent the upload's id with every part and forgot it once the image was stored.
    ids = d.execute_script('return localStorage.getItem("bifs-upload-ids");')
    assert ids == "{}", f"upload ids left in localStorage: {ids}"

    step("a failed image says why in its row, not only in a tooltip")
    main_button(d, "Create Backing Image").click()
    field(d, "Name").send_keys("broken")
    field(d, "URL").send_keys(source_url.rsplit("/", 1)[0] + "/missing.img")
    assert submit_create(d) == "error", "a download of a missing file was not refused"
    assert "404" in create_error(d), create_error(d)
    button(d, "Cancel").click()
    wait(d, lambda drv: state(drv, "broken") == "failed", "broken to be failed")
    msg = row(d, "broken").find_element(By.CSS_SELECTOR, "td.state .row-message")
    assert msg.is_displayed() and "404" in msg.text, f"the failure is not shown in the row: {msg.text!r}"
    assert fully_visible(d, msg)

    step("a 40-character encrypted name at 1280 px: the lock beside it, no button wraps")
    api_create(LONG_NAME, {"sourceType": "clone", "sourceParameters": {
        "backing-image": "base", "encryption": "encrypt", "secret": SECRET_NAME, "secret-namespace": SECRET_NS}})
    wait(d, lambda drv: state(drv, LONG_NAME) == "ready", f"{LONG_NAME} to be ready")
    geo = d.execute_script("""
        const tr = document.querySelector(`#images tr[data-name="${arguments[0]}"]`);
        const lock = tr.querySelector('.lock').getBoundingClientRect();
        const name = tr.querySelector('td.name button').getBoundingClientRect();
        const lh = parseFloat(getComputedStyle(tr.querySelector('td.name button')).lineHeight);
        const wrap = document.querySelector('.table-wrap');
        const rows = [...document.querySelectorAll('#images tbody tr')].map(r => {
          const tops = [...r.querySelectorAll('.ops button')].map(b => Math.round(b.getBoundingClientRect().top));
          const last = r.querySelector('.ops button:last-child').getBoundingClientRect();
          return {name: r.dataset.name, tops, right: last.right};
        });
        return {lock: [lock.left, lock.top, lock.right, lock.bottom], name: [name.left, name.top, name.right, name.bottom],
                lh, rows, wrapRight: wrap.getBoundingClientRect().right, scroll: wrap.scrollWidth, client: wrap.clientWidth};
        """, LONG_NAME)
    ll, lt, lr, lb = geo["lock"]
    nl, nt, nr, nb = geo["name"]
    assert lr <= nl, f"the lock is not left of the name: {geo}"
    assert lt >= nt - 2 and lb <= nb + 2, f"the lock is not on the name's line: {geo}"
    assert nb - nt < 1.5 * geo["lh"], f"the 40-character name wraps at 1280 px: {geo}"
    for r in geo["rows"]:
        assert len(set(r["tops"])) == 1, f"{r['name']}'s buttons wrap: {r}"
        assert r["right"] <= geo["wrapRight"], f"{r['name']}'s Delete is outside the table: {r}"
    assert geo["scroll"] <= geo["client"], f"the table scrolls sideways at 1280 px: {geo}"

    step("the last row's menu is fully visible, below its button or above it")
    last = d.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-state='ready']")[-1].get_attribute("data-name")
    below = check_menu_fully_visible(d, last, "1280x800")[0].rect["y"]
    assert below > menu_button(d, last).rect["y"], "the menu did not open below its button"
    shot(d, "09-last-row-menu")
    active(d).send_keys(Keys.ESCAPE)
    h = d.execute_script("return document.querySelector('#images tbody tr:last-child').getBoundingClientRect().bottom")
    viewport(d, 1280, int(h) + 40)
    above = check_menu_fully_visible(d, last, f"1280x{int(h) + 40}")[-1].rect["y"]
    assert above < menu_button(d, last).rect["y"], "with no room below, the menu did not open above"
    active(d).send_keys(Keys.ESCAPE)
    viewport(d, 1280, 800)

    step("detail: the Longhorn spec fields and the manifest")
    row(d, "base").find_element(By.XPATH, ".//button[normalize-space()='base']").click()
    det = d.find_element(By.ID, "detail-dialog")
    wait(d, lambda drv: det.get_attribute("open") is not None, "the detail dialog")
    text = det.text
    for want_text in ("UUID", "Created From", "Expected SHA512 Checksum", "Current SHA512 Checksum", "Verified",
                      ".sha512", "Minimum Number of Copies", "Data Engine", "Node Tag", "Disk Tag",
                      "storage", "ssd", "fast"):
        assert want_text in text, f"detail lacks {want_text!r}:\n{text}"
    det.find_element(By.XPATH, ".//summary[normalize-space()='Manifest']").click()
    manifest = d.find_element(By.ID, "detail-manifest-text").text
    for line in ("kind: BackingImage", "minNumberOfCopies: 2", "- storage", "- ssd"):
        assert line in manifest, f"the detail's manifest lacks {line!r}:\n{manifest}"
    shot(d, "04-detail")
    button(d, "Close").click()

    step("Decrypt of a plain image is refused with the admission message")
    main_button(d, "Create Backing Image").click()
    field(d, "Name").send_keys("base-decrypted")
    choose(field(d, "Created From"), "Clone From Existing Backing Image")
    choose(field(d, "Source Backing Image"), "base")
    choose(field(d, "Encryption"), "decrypt")
    field(d, "Secret").send_keys(SECRET_NAME)
    field(d, "Secret Namespace").send_keys(SECRET_NS)
    assert submit_create(d) == "error", "Decrypt of a plain image was not refused"
    msg = create_error(d)
    assert "already decrypted" in msg and "encryption" in msg, f"unexpected refusal: {msg}"
    step(f"refused: {msg}")
    shot(d, "05-refusal")
    field(d, "Secret").send_keys(" ")
    assert create_error(d) == "", "the refusal stayed after the Secret was edited"
    button(d, "Cancel").click()

    # The screenshot for the README: the table with its states.
    time.sleep(0.5)
    shot(d, "01-table")

    step("delete with Longhorn's confirmation")
    for name in [n for n in ("base-copy", "uploaded") if row(d, n)]:
        button(d, "Delete", scope=row(d, name)).click()
        conf = d.find_element(By.ID, "confirm-dialog")
        wait(d, lambda drv: conf.get_attribute("open") is not None, "the confirmation")
        assert f"Are you sure you want to delete {name} backing image?" in conf.text, conf.text
        button(d, "Delete").click()
        wait(d, lambda drv, n=name: row(drv, n) is None, f"{name} to disappear")
    names = [i["metadata"]["name"] for i in api("/api/v1/backingimages")["items"]]
    assert "uploaded" not in names, names
    assert d.execute_script("return window.__noReload") == 42, "the page reloaded"


def narrow():
    """The page on a narrow window: each image a card, nothing off the side, menus and dialog work."""
    d = start_browser(420, 800)
    try:
        d.get(URL + "/")
        wait(d, lambda drv: open_dialog_or_token(drv) or state(drv, "base") == "ready",
             "the token dialog or the table")
        wait(d, lambda drv: state(drv, "base") == "ready", "the table on a narrow window")
        width = d.execute_script("return document.documentElement.scrollWidth")
        assert width <= 420, f"the page scrolls sideways at 420px ({width}px)"
        for r in d.find_elements(By.CSS_SELECTOR, "#images tbody tr"):
            for b in r.find_elements(By.CSS_SELECTOR, ".ops button"):
                right = b.rect["x"] + b.rect["width"]
                assert right <= 420, f"{r.get_attribute('data-name')}: {b.text} ends at {right}px"
        labels = d.execute_script(
            "return getComputedStyle(document.querySelector('#images tbody td.state'), '::before').content")
        assert "State" in labels, f"the narrow cards do not label their fields ({labels})"
        shot(d, "10-narrow-table")
        last = d.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-state='ready']")[-1].get_attribute("data-name")
        d.execute_script("arguments[0].scrollIntoView({block: 'end'})", menu_button(d, last))
        check_menu_fully_visible(d, last, "420x800")
        active(d).send_keys(Keys.ESCAPE)
        assert not menu_open(d)
        d.execute_script("window.scrollTo(0, 0)")
        main_button(d, "Create Backing Image").click()
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
