"""The workstation page in a real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.data.phantoms import make_phantom

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tiny_run):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium) - browser test skipped")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    import uvicorn

    from lungct.model.predictor import Predictor
    from lungct.serve import create_app

    app = create_app(Predictor.from_run(tiny_run), run_dir=tiny_run)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def page(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(server_url)
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _slice(path: Path, kind: str = "malignant", seed: int = 0, size: int = 256) -> Path:
    Image.fromarray(make_phantom(kind, size, seed)[0]).save(path)
    return path


def test_single_slice_flow(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#banner")).to_contain_text("Research use only")
    expect(page.locator("#model-info")).to_contain_text("small_cnn")
    page.set_input_files("#file-input", str(_slice(tmp_path / "Doe_Jane.png")))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    page.wait_for_function("() => { const o = document.querySelector('#overlay');"
                           " return o.complete && o.naturalWidth > 0; }")  # fmt: skip
    decision = page.inner_text("#decision").strip().lower()
    assert decision in ("normal", "benign", "malignant")
    assert page.evaluate("document.querySelector('#overlay').naturalWidth") == 256
    assert page.evaluate("document.querySelector('#base-image').naturalWidth") == 256
    assert page.locator("#probs .prob-row").count() == 3
    expect(page.locator("#prob-malignant .threshold-mark")).to_have_count(1)

    page.locator("#opacity").fill("80")
    assert page.evaluate("getComputedStyle(document.querySelector('#overlay')).opacity") == "0.8"
    expect(page.locator("#opacity-value")).to_have_text("80%")
    assert "Doe" not in page.evaluate("document.body.innerText")

    shot = tmp_path / "page.png"
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")  # sticky banner at the top of the shot
    page.wait_for_function("() => window.scrollY === 0")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as im:
        assert im.width == 1280 and np.asarray(im.convert("L")).std() > 10

    with page.expect_download() as dl:
        page.click("#report-btn")
    report = Path(dl.value.path()).read_text(encoding="utf-8")
    assert "Research use only" in report and "data:image/png;base64," in report
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report)  # base64 can hold any word
    assert decision in text.lower() and "Doe" not in text and ".png" not in text


def test_errors_are_shown(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image\n" * 10)
    page.set_input_files("#file-input", str(bad))
    expect(page.locator("#error")).to_be_visible(timeout=30_000)
    expect(page.locator("#error")).to_contain_text("415")
    expect(page.locator("#error")).to_contain_text("unsupported file type")


def test_study_flow_most_suspicious_first(page, tmp_path):
    from playwright.sync_api import expect

    files = [
        str(_slice(tmp_path / f"s{k}.png", kind, k))
        for k, kind in enumerate(["normal", "malignant", "benign"])
    ]
    page.set_input_files("#file-input", files)
    expect(page.locator("#study")).to_be_visible(timeout=60_000)
    expect(page.locator("#slice-table tbody tr")).to_have_count(3)
    expect(page.locator("#top-slices li")).to_have_count(3)
    probs = [
        float(t.split("p(malignant) ")[1].split(" ")[0])
        for t in page.locator("#top-slices li").all_inner_texts()
    ]
    assert probs == sorted(probs, reverse=True)
    page.wait_for_function("() => document.querySelector('#overlay').naturalWidth > 0")
    assert "s1.png" not in page.content()
