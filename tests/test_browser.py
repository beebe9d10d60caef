"""The workstation page in a real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Screenshots and the report PDF are saved to ``$LUNGCT_ARTIFACTS`` (else the test's tmp folder) and
the folder is printed, so CI can keep them as artefacts.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.data.phantoms import make_phantom, make_series

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
SLOW = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = Path(os.environ.get("LUNGCT_ARTIFACTS") or tmp_path_factory.mktemp("browser-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test artefacts (screenshots, report PDF): {out}")
    return out


@pytest.fixture(scope="module")
def feedback_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feedback") / "feedback.jsonl"


@pytest.fixture(scope="module")
def server_url(tiny_run, feedback_log):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium) - browser test skipped")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    import uvicorn

    from lungct.model.predictor import Predictor
    from lungct.serve import create_app

    app = create_app(Predictor.from_run(tiny_run), run_dir=tiny_run, feedback_log=feedback_log)
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


@pytest.fixture(scope="module")
def browser(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def _open(browser, server_url, errors, **context):
    ctx = browser.new_context(
        accept_downloads=True, **({"viewport": {"width": 1280, "height": 1000}} | context)
    )
    pg = ctx.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server_url)
    pg.wait_for_function("() => window.lungctApp && window.lungctApp.state.model !== null")
    return pg


@pytest.fixture()
def page(browser, server_url):
    errors: list[str] = []
    pg = _open(browser, server_url, errors)
    yield pg
    pg.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture()
def phone(browser, server_url):
    errors: list[str] = []
    pg = _open(
        browser, server_url, errors, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    yield pg
    pg.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _slice(path: Path, kind: str = "malignant", seed: int = 0, size: int = 256) -> Path:
    Image.fromarray(make_phantom(kind, size, seed)[0]).save(path)
    return path


def _series_zip(path: Path, patients: list[tuple[str, str, int, int]], size: int = 128) -> Path:
    """A zip of phantom scans: (folder, kind, seed, n slices) each; members folder/IMG###.png."""
    with zipfile.ZipFile(path, "w") as zf:
        for folder, kind, seed, n in patients:
            for k, (img, _) in enumerate(make_series(kind, n, size, seed), start=1):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                zf.writestr(f"{folder}/IMG{k:03d}.png", buf.getvalue())
    return path


def _wait_slice(page, n: int) -> None:
    page.wait_for_function(f"() => document.querySelector('#view').dataset.slice === '{n}'", timeout=SLOW)


def _canvas_sum(page) -> float:
    """Sum of the viewer canvas's RGB pixels (changes when what is drawn changes)."""
    return page.evaluate(
        """() => { const c = document.querySelector('#view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0;
        for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2];
        return s; }"""
    )


def _shot(page, path: Path) -> None:
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert np.asarray(im.convert("L")).std() > 10


# ------------------------------------------------------------------ single slice, errors


def test_single_slice_flow(page, tmp_path, artifacts):
    from playwright.sync_api import expect

    expect(page.locator("#banner")).to_contain_text("Research use only")
    expect(page.locator("#model-info")).to_contain_text("small_cnn")
    page.set_input_files("#file-input", str(_slice(tmp_path / "Doe_Jane.png")))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    _wait_slice(page, 1)
    decision = page.inner_text("#decision").strip().lower()
    assert decision in ("normal", "benign", "malignant")
    expect(page.locator("#result-title")).to_have_text("Slice result")
    # The source name is shown for tracing; the viewer shows the native 256 px image.
    expect(page.locator("#slice-caption")).to_contain_text("Doe_Jane.png")
    expect(page.locator("#wl-readout")).to_contain_text("256 × 256 px (native)")
    assert page.locator("#probs .prob-row").count() == 3
    expect(page.locator("#prob-malignant .threshold-mark")).to_have_count(1)
    # The heat map of the slice arrives lazily; opacity and the on/off toggle change the drawn pixels.
    page.wait_for_function(
        "() => document.querySelector('#view').dataset.heat.startsWith('1:')", timeout=SLOW
    )
    page.locator("#opacity").fill("0")
    off = _canvas_sum(page)
    page.locator("#opacity").fill("90")
    expect(page.locator("#opacity-value")).to_have_text("90%")
    on = _canvas_sum(page)
    assert on != off
    page.locator("#heat-toggle").uncheck()
    assert _canvas_sum(page) == off
    page.locator("#heat-toggle").check()
    _shot(page, artifacts / "single-slice.png")

    with page.expect_download() as dl:
        page.click("#report-btn")
    report = Path(dl.value.path()).read_text(encoding="utf-8")
    assert "Research use only" in report and "data:image/png;base64," in report
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report)  # base64 can hold any word
    assert decision in text.lower()
    assert "Doe" not in text  # source names stay out of the report unless asked for


def test_not_assessed_slice_is_viewable_without_a_decision(page, tmp_path):
    from playwright.sync_api import expect

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(blank)
    page.set_input_files("#file-input", str(blank))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    _wait_slice(page, 1)  # the reader still sees the image
    expect(page.locator("#decision")).to_have_text("Not assessed")
    expect(page.locator("#ood-note")).to_be_visible()
    expect(page.locator("#slice-caption")).to_contain_text("not assessed")
    expect(page.locator("#slice-flag")).to_be_hidden()
    assert (
        page.evaluate("document.querySelector('#view').dataset.heat") == "none"
    )  # no heat map, no diagnosis


def test_errors_are_shown(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image\n" * 10)
    page.set_input_files("#file-input", str(bad))
    expect(page.locator("#error")).to_be_visible(timeout=SLOW)
    expect(page.locator("#error")).to_contain_text("415")
    expect(page.locator("#error")).to_contain_text("unsupported file type")


# ------------------------------------------------------------------ the slice viewer


def test_scroll_every_slice_by_keyboard_wheel_and_slider(page, tmp_path, artifacts):
    from playwright.sync_api import expect

    n = 12
    page.set_input_files("#file-input", str(_series_zip(tmp_path / "scan.zip", [("ct", "malignant", 3, n)])))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    expect(page.locator("#slice-table tbody tr")).to_have_count(n)
    expect(page.locator("#scan-picker")).to_be_hidden()
    # The viewer opens on the most suspicious slice, and the result is announced to screen readers.
    first = page.evaluate("window.lungctApp.state.data.case.most_suspicious_slice")
    _wait_slice(page, first)
    expect(page.locator("#announce")).to_contain_text("Case result")
    page.locator("#view").focus()
    page.keyboard.press("Home")
    _wait_slice(page, 1)
    if first != 1:
        page.click("#goto-top-btn")
        _wait_slice(page, first)
        page.locator("#view").focus()
        page.keyboard.press("Home")
        _wait_slice(page, 1)
    sums = [_canvas_sum(page)]
    for k in range(2, n + 1):  # every slice by keyboard: the picture, its source name and the row change
        page.keyboard.press("ArrowDown" if k % 2 else "PageDown" if k == n else "ArrowRight")
        _wait_slice(page, k)
        expect(page.locator("#slice-caption")).to_contain_text(f"Slice {k} of {n}")
        expect(page.locator("#slice-caption")).to_contain_text(f"scan.zip/ct/IMG{k:03d}.png")
        expect(page.locator(f"#row-{k}")).to_have_class(re.compile(r"\bcurrent\b"))
        expect(page.locator(f"#row-{k}")).to_have_attribute("aria-current", "true")
        sums.append(_canvas_sum(page))
    assert len(set(sums)) == n, "each slice must draw different pixels"
    page.locator("#view").scroll_into_view_if_needed()
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for k in range(n - 1, 0, -1):  # and back up by the mouse wheel
        page.mouse.wheel(0, -100)
        _wait_slice(page, k)
        expect(page.locator("#slice-caption")).to_contain_text(f"IMG{k:03d}.png")
    page.locator("#slice-slider").fill("7")
    _wait_slice(page, 7)
    page.locator("#row-4 .row-btn").click()  # rows are buttons: reachable by Tab, work by Enter
    _wait_slice(page, 4)
    page.locator("#row-9 .row-btn").focus()
    page.keyboard.press("Enter")
    _wait_slice(page, 9)
    # Heat maps for any slice, on demand.
    page.wait_for_function(
        "() => document.querySelector('#view').dataset.heat.startsWith('9:')", timeout=SLOW
    )
    # Zoom changes the picture; Fit restores it.
    before = _canvas_sum(page)
    page.click("#zoom-in")
    assert _canvas_sum(page) != before
    page.click("#reset-view")
    assert _canvas_sum(page) == before
    _shot(page, artifacts / "study-viewer.png")


def _dicom_series(tmp_path: Path, n: int = 4) -> list[str]:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    if src is None:
        pytest.skip("pydicom's CT_small.dcm test file is not available")
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * (n - k)]
        ds.InstanceNumber = n - k
        p = tmp_path / f"IM{k:04d}.dcm"
        ds.save_as(p)
        paths.append(str(p))
    return paths


def test_dicom_window_level_presets_change_pixels(page, tmp_path, artifacts):
    from playwright.sync_api import expect

    page.set_input_files("#file-input", _dicom_series(tmp_path))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    page.locator("#view").focus()
    page.keyboard.press("Home")
    _wait_slice(page, 1)
    # Sorted by position; instance numbers and source names shown; native 128 px, lung window first.
    expect(page.locator("#slice-caption")).to_contain_text("IM0003.dcm")
    expect(page.locator("#slice-caption")).to_contain_text("instance 1")
    expect(page.locator("#wl-readout")).to_contain_text(
        "128 × 128 px (native) · level -600 HU / width 1500 HU"
    )
    page.locator("#heat-toggle").uncheck()
    lung = _canvas_sum(page)
    page.select_option("#wl-preset", "mediastinum")
    expect(page.locator("#wl-readout")).to_contain_text("level 40 HU / width 400 HU")
    media = _canvas_sum(page)
    assert media != lung
    page.select_option("#wl-preset", "lung")
    assert _canvas_sum(page) == lung
    # Shift+drag sets window/level by hand.
    page.locator("#view").scroll_into_view_if_needed()
    box = page.locator("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.keyboard.down("Shift")
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 40, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")
    assert _canvas_sum(page) != lung
    expect(page.locator("#wl-readout")).not_to_contain_text("level -600 HU / width 1500 HU")
    expect(page.locator("#wl-preset")).to_have_value("custom")
    _shot(page, artifacts / "dicom-window-level.png")


def test_mixed_zip_is_split_into_cases(page, tmp_path, artifacts):
    from playwright.sync_api import expect

    zpath = _series_zip(tmp_path / "mixed.zip", [("p1", "malignant", 1, 5), ("p2", "normal", 2, 4)])
    page.set_input_files("#file-input", str(zpath))
    expect(page.locator("#scan-picker")).to_be_visible(timeout=SLOW)
    expect(page.locator("#scan-note")).to_contain_text("2 different scans")
    expect(page.locator("#scan-buttons .scan-btn")).to_have_count(2)
    expect(page.locator("#warnings")).to_contain_text("held 2 scans")
    expect(page.locator("#result-title")).to_have_text("Case result (5 slices)")
    page.locator("#scan-buttons .scan-btn").nth(1).click()
    expect(page.locator("#result-title")).to_have_text("Case result (4 slices)")
    expect(page.locator("#slice-table tbody")).to_contain_text("mixed.zip/p2/IMG001.png")
    expect(page.locator("#slice-table tbody")).not_to_contain_text("p1/")
    expect(page.locator("#scan-buttons .scan-btn").nth(1)).to_have_attribute("aria-pressed", "true")
    _shot(page, artifacts / "mixed-zip-split.png")
    page.click("#as-one-btn")  # the reader knows better than the grouping: one case, with a warning
    expect(page.locator("#result-title")).to_have_text("Case result (9 slices)", timeout=SLOW)
    expect(page.locator("#warnings")).to_contain_text("may hold 2 scans")
    expect(page.locator("#scan-picker")).to_be_hidden()


def test_progress_and_cancel(page, tmp_path, server_url):
    from playwright.sync_api import expect

    held = []
    page.route("**/api/v1/studies?*", lambda route: held.append(route))  # the answer never comes
    page.set_input_files("#file-input", str(_series_zip(tmp_path / "c.zip", [("a", "normal", 2, 3)])))
    expect(page.locator("#progress-row")).to_be_visible()
    expect(page.locator("#progress")).to_be_visible()
    page.wait_for_function("() => window.lungctApp.state.xhr !== null")
    pid = page.evaluate("window.lungctApp.state.progressId")
    with page.expect_response(f"**/api/v1/progress/{pid}/cancel") as cancelled:
        page.click("#cancel-btn")
    assert cancelled.value.status == 200
    with urllib.request.urlopen(f"{server_url}/api/v1/progress/{pid}") as resp:
        assert json.load(resp)["cancelled"] is True  # the server stops this analysis at its next batch
    expect(page.locator("#status")).to_have_text("Cancelled.")
    expect(page.locator("#progress-row")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    assert held
    for route in held:  # release the held request before the page closes
        route.abort()
    page.unroute("**/api/v1/studies?*")


# ------------------------------------------------------------------ result panel, report, feedback


def test_result_panel_states_operating_point_and_limits(page, tmp_path, tiny_run):
    from playwright.sync_api import expect

    metrics = json.loads((tiny_run / "eval" / "test" / "metrics.json").read_text())
    sl = metrics["decision"]["slice"]
    page.set_input_files("#file-input", str(_series_zip(tmp_path / "s.zip", [("a", "malignant", 5, 4)])))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    op = page.inner_text("#operating")
    assert f"{sl['malignant']['sensitivity']:.2f}" in op and f"{sl['malignant']['specificity']:.2f}" in op
    assert "95 % CI" in op and f"{metrics['decision']['rule']['malignant_threshold']:.3f}" in op
    assert f"{sl['n_groups']} scans" in op
    limits = page.locator("#limits li").all_inner_texts()
    card = page.evaluate("window.lungctApp.state.model")
    assert limits == card["known_limits"] and limits  # read from the run's metrics, not the page
    # A case decided "normal" by the mean whose slice reaches the threshold on its own: the flag is
    # as prominent as the headline (same response, case fields changed, rendered by the page).
    page.evaluate(
        """() => { const d = structuredClone(window.lungctApp.state.data);
        Object.assign(d.case, {decision: 'normal', n_above_threshold: 1, most_suspicious_slice: 2});
        window.lungctApp.renderStudy(d, false); }"""
    )
    flag = page.locator("#slice-flag")
    expect(flag).to_be_visible()
    expect(flag).to_contain_text("1 of 4 slices reaches the malignant threshold on its own — review it")
    expect(flag).to_contain_text("slice 2 (s.zip/a/IMG002.png)")
    expect(page.locator("#decision")).to_have_text("normal")

    def size(sel: str) -> float:
        return page.evaluate(f"parseFloat(getComputedStyle(document.querySelector('{sel}')).fontSize)")

    assert size("#slice-flag") >= size("#decision")
    assert "reaches the malignant threshold" in page.inner_text("#announce")


def test_report_captions_next_to_images_and_pdf(page, browser, tmp_path, artifacts, feedback_log):
    from playwright.sync_api import expect

    page.set_input_files("#file-input", str(_series_zip(tmp_path / "r.zip", [("a", "malignant", 7, 6)])))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    page.fill("#accession", "ACC-20261201-7")
    page.fill("#reader", "Dr Reader")
    with page.expect_download() as dl:
        page.click("#report-btn")
    html = Path(dl.value.path()).read_text(encoding="utf-8")
    assert "ACC-20261201-7" in html and "Dr Reader" in html
    version = page.evaluate("window.lungctApp.state.model.version")
    assert version in html and re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", html)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    thresholds = re.findall(r"threshold (?:p\(malignant\) ≥ )?(\d+\.\d+)", text)
    assert thresholds and all(len(t.split(".")[1]) == 3 for t in thresholds), thresholds  # one format
    assert "r.zip" not in text  # source names only when asked for
    rpage = browser.new_page()
    rpage.set_content(html)
    figs = rpage.evaluate(
        """() => [...document.querySelectorAll('figure')].map(f => ({
            slice: f.dataset.slice, tags: [...f.children].map(c => c.tagName),
            caption: f.querySelector('figcaption').textContent,
            imgBottom: f.querySelector('img').getBoundingClientRect().bottom,
            capTop: f.querySelector('figcaption').getBoundingClientRect().top }))"""
    )
    top = page.evaluate("window.lungctApp.state.data.top.slice(0, 3)")
    assert [int(f["slice"]) for f in figs][:3] == top
    for f in figs:  # each caption sits in its own figure, right under its own image
        assert f["tags"] == ["IMG", "FIGCAPTION"]
        assert f["caption"].startswith(f"Slice {f['slice']}")
        assert 0 <= f["capTop"] - f["imgBottom"] < 20
    rpage.screenshot(path=str(artifacts / "report.png"), full_page=True)
    pdf = artifacts / "report.pdf"
    rpage.pdf(path=str(pdf), format="A4", print_background=True)
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000
    rpage.close()
    # Printing from the page stamps date, model version, accession and reader.
    page.evaluate("window.print = () => { window.__printed = true; }")
    page.click("#print-btn")
    assert page.evaluate("window.__printed") is True
    header = (
        page.inner_text("#print-header")
        if page.locator("#print-header").is_visible()
        else page.evaluate("document.querySelector('#print-header').textContent")
    )
    assert "ACC-20261201-7" in header and version in header and re.search(r"\d{2}:\d{2} UTC", header)
    page.emulate_media(media="print")
    page.pdf(path=str(artifacts / "page-print.pdf"), format="A4")
    page.emulate_media(media="screen")
    # Reader feedback goes to the local log with the model version and without identifiers.
    expect(page.locator("#feedback")).to_be_visible()
    page.select_option("#reader-class", "benign")
    page.click("#disagree-btn")
    expect(page.locator("#feedback-status")).to_contain_text("Recorded: disagree")
    record = json.loads(feedback_log.read_text().splitlines()[-1])
    assert (
        record["agree"] is False and record["reader_class"] == "benign" and record["model_version"] == version
    )
    assert "ACC" not in feedback_log.read_text() and "r.zip" not in feedback_log.read_text()


def test_pacs_panel_lists_and_analyses(browser, server_url):
    """The PACS panel appears only when the server has a PACS (GET /api/v1/pacs/status answers); PACS
    answers are mocked here (the PACS routes themselves are tested with the PACS wing)."""
    from playwright.sync_api import expect

    errors: list[str] = []
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))

    def model(route):  # the card says nothing about a PACS: the page asks /api/v1/pacs/status
        card = route.fetch().json()
        card.pop("pacs", None)
        route.fulfill(json=card)

    study = {"study_uid": "1.2.3", "study_date": "20260102", "description": "CT chest",
             "modalities": ["CT"], "n_instances": 40}  # fmt: skip
    pg.route("**/api/v1/model", model)
    status = {"enabled": True, "reachable": True, "detail": None}
    pg.route("**/api/v1/pacs/status", lambda route: route.fulfill(json=status))
    pg.route("**/api/v1/pacs/studies", lambda route: route.fulfill(json={"studies": [study]}))
    case = {"decision": "benign", "decision_text": "benign: case p(malignant) 0.100 (mean) < threshold 0.302"}
    stored = {"sr_series_uid": "9.8.7", "sc_series_uid": "9.8.8"}
    pg.route(
        "**/api/v1/pacs/studies/1.2.3", lambda route: route.fulfill(json={"case": case, "stored": stored})
    )
    pg.goto(server_url)
    expect(pg.locator("#pacs-panel")).to_be_visible()
    pg.click("#pacs-list-btn")
    expect(pg.locator("#pacs-table tbody tr")).to_have_count(1)
    expect(pg.locator("#pacs-table tbody")).to_contain_text("CT chest")
    pg.click(".pacs-analyse")
    expect(pg.locator("#pacs-result")).to_contain_text("benign")
    expect(pg.locator("#pacs-result")).to_contain_text("9.8.7")
    ctx.close()
    assert not errors


def test_no_pacs_panel_without_pacs(page):
    from playwright.sync_api import expect

    expect(page.locator("#pacs-panel")).to_be_hidden()


# ------------------------------------------------------------------ keyboard, screen reader, phone


@pytest.fixture()
def page_no_csp(browser, server_url):
    """The page in a context that lets the test inject axe-core (the page's CSP forbids inline scripts)."""
    errors: list[str] = []
    pg = _open(browser, server_url, errors, bypass_csp=True)
    yield pg
    pg.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_keyboard_focus_order_and_axe_scan(page_no_csp, tmp_path, artifacts):
    from playwright.sync_api import expect

    page = page_no_csp

    # The hidden file input never takes focus; the first Tab stops are the real controls.
    stops = []
    for _ in range(3):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert "file-input" not in stops and "choose-btn" in stops
    page.set_input_files("#file-input", str(_series_zip(tmp_path / "k.zip", [("a", "benign", 9, 5)])))
    expect(page.locator("#result")).to_be_visible(timeout=SLOW)
    assert page.evaluate("document.activeElement.id") == "result-title"  # focus moves to the result
    expect(page.locator("#announce")).to_have_attribute("aria-live", "assertive")
    if not AXE.is_file():
        pytest.skip(f"axe-core not installed at {AXE} (run `npm ci`): accessibility scan skipped")
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} - {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    (artifacts / "axe.json").write_text(json.dumps(result["violations"], indent=1))
    assert not bad, "axe-core found serious accessibility problems:\n" + "\n".join(bad)


def test_phone_layout(phone, tmp_path, artifacts):
    from playwright.sync_api import expect

    phone.set_input_files("#file-input", str(_series_zip(tmp_path / "m.zip", [("phone", "malignant", 4, 5)])))
    expect(phone.locator("#result")).to_be_visible(timeout=SLOW)
    assert phone.evaluate("getComputedStyle(document.querySelector('#banner')).position") == "static"
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
    # The case heading is not covered by anything when scrolled to.
    covered = phone.evaluate(
        """() => { const h = document.querySelector('#result-title'); h.scrollIntoView();
        const r = h.getBoundingClientRect();
        const el = document.elementFromPoint(r.left + 5, r.top + r.height / 2);
        return !(el === h || h.contains(el)); }"""
    )
    assert not covered
    phone.screenshot(path=str(artifacts / "phone.png"), full_page=True)
