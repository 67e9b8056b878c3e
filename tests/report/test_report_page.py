"""``labelaudit report`` end to end: the three files in the dated folder, and the page in headless
Chromium (Debian's chromium + chromium-driver, scripts/setup.sh): no console errors, every image
loaded, thumbnails where the images are known and words where they are not, a screenshot that is not
blank. Also the page of an empty night."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelaudit.cli import app
from labelaudit.schemas.report import Report
from labelaudit.serving.report.render import estimate_source
from tests.report.reportkit import KNOWN, fill

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("install Debian's chromium and chromium-driver (bash scripts/setup.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2400",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the given driver: nothing downloaded
    yield driver
    driver.quit()


def run_report(store: str, out: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["report", "--store-url", store, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result.output


def open_page(browser, html: Path) -> tuple[list[dict], list[list], np.ndarray]:
    """(console entries, [complete, naturalWidth, alt] per <img>, the screenshot as a grey array)."""
    browser.get(html.resolve().as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    return browser.get_log("browser"), images, np.asarray(shot, dtype=float)


def test_report_files_and_page(tmp_path, browser):
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", KNOWN)
    folder = tmp_path / "images"
    folder.mkdir()
    for item in ("m2", "i2"):  # two of the queue's six items have images; the rest are said to have none
        pixels = (np.indices((28, 28)).sum(0) * 4 % 256).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{item}.png")
    output = run_report(store, tmp_path / "reports", "--date", "2026-11-21", "--images", str(folder))

    night = tmp_path / "reports" / "2026-11-21"
    report = Report.model_validate_json((night / "report.json").read_text())
    # the terminal's table: every labeler with its estimate's source
    assert "labelers: disagreement with the model, estimated error rate" in output
    sources = [estimate_source(row.estimated_error) for row in report.labelers]
    assert set(sources) == {"disagreement"}  # no card, and too few shared items for agreement
    for row, source in zip(report.labelers, sources, strict=True):
        flag = "yes" if row.flagged else ("" if row.test else "-")  # "-": not tested
        assert re.search(
            rf"{re.escape(row.labeler_id or '(no id)')}\s.*\s{source}\s+│ {re.escape(flag)}\s*│", output
        ), output
    assert any(row.test is None for row in report.labelers)  # the unnamed labels: a "-", not a blank
    assert report.headline.labels == 16 and report.model.model_version == "1"
    queue = list(csv.DictReader((night / "relabel_queue.csv").open()))
    assert [q["item_id"] for q in queue] == [q.item_id for q in report.relabel_queue] and len(queue) == 6
    assert {q.item_id for q in report.relabel_queue if q.thumbnail} == {"m2", "i2"}

    console, images, shot = open_page(browser, night / "report.html")
    assert [e for e in console if e["level"] == "SEVERE"] == []
    assert len(images) >= 7  # five figures and two thumbnails
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert sorted(alt for _, _, alt in images if alt in ("m2", "i2")) == ["i2", "m2"]
    assert browser.page_source.count(">no image<") == 4
    assert shot.std() > 20 and (shot < 200).mean() > 0.02  # text and figures, not a blank page


def test_an_empty_night_has_a_page_that_says_so(tmp_path, browser):
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", KNOWN)
    run_report(store, tmp_path / "reports", "--date", "2026-12-01")
    page = tmp_path / "reports" / "2026-12-01" / "report.html"
    console, images, shot = open_page(browser, page)
    assert [e for e in console if e["level"] == "SEVERE"] == []
    assert all(complete and width > 0 for complete, width, _ in images)
    assert "an empty night" in browser.page_source
    assert shot.std() > 5


def test_a_missing_store_is_an_error_not_an_empty_report(tmp_path):
    result = CliRunner().invoke(
        app, ["report", "--store-url", f"sqlite:///{tmp_path / 'nope.db'}", "--date", "2026-11-21"]
    )
    assert result.exit_code == 2 and "no audit store" in result.output
    assert not (tmp_path / "nope.db").exists()


def test_since_and_until_name_the_folder(tmp_path):
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", KNOWN)
    run_report(store, tmp_path / "r", "--since", "2026-11-20T00:00", "--until", "2026-11-22T00:00")
    report = Report.model_validate_json(
        (tmp_path / "r" / "2026-11-20T0000--2026-11-22T0000" / "report.json").read_text()
    )
    assert report.headline.labels == 18  # both nights of version 1


def test_the_audit_sample_rate_comes_from_the_streams_setting_or_the_option(tmp_path, monkeypatch):
    """The report reads LABELAUDIT_AUDIT_SAMPLE_RATE, as the stream that drew the sample does; the option wins."""
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", KNOWN)

    def notes(folder: str, *args: str) -> list[str]:
        run_report(store, tmp_path / folder, "--date", "2026-11-21", *args)
        return Report.model_validate_json((tmp_path / folder / "2026-11-21" / "report.json").read_text()).notes

    assert not any("audit sample" in n for n in notes("plain"))
    monkeypatch.setenv("LABELAUDIT_AUDIT_SAMPLE_RATE", "0.25")
    assert any("random audit sample (25% of the items" in n for n in notes("env"))
    assert any("(10% of the items" in n for n in notes("option", "--audit-sample-rate", "0.1"))
    assert not any("audit sample" in n for n in notes("off", "--audit-sample-rate", "0"))
    result = CliRunner().invoke(app, ["report", "--store-url", store, "--audit-sample-rate", "1.5"])
    assert result.exit_code == 2 and "audit-sample-rate" in result.output
