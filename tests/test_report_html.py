"""seg-run's report.html: its structure after a real run, the slice it picks, and how Chromium renders it."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest

from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.runtime.outputs import report_html

PNG_DATA = "data:image/png;base64,"


class _Page(HTMLParser):
    """What the tests read from the page: table body rows by table id, tags with their attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._rows: list[list[str]] | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._rows = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._rows is not None:
            self._row = []
            self._rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def attrs(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture(scope="module")
def run(tiny_sample, tiny_artifacts, tmp_path_factory):
    """seg-run over two kaggle_3m patients, one single slice and two bad files: (out, summary.json, page)."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("report_scans")
    patients = sorted(p for p in tiny_sample.iterdir() if p.is_dir())[:2]
    for patient in patients:
        shutil.copytree(patient, root / patient.name)
    first = sorted(patients[0].glob("*_1.tif"))[0]
    assert cv2.imwrite(str(root / "single.png"), cv2.imread(str(first)))
    good = (root / "single.png").read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "bad" / "notes.txt").write_text("not a scan")
    out = tmp_path_factory.mktemp("report_out")
    segment([root], tiny_artifacts, out, RunOptions(batch_size=4, readers=1))
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, _Page((out / "report.html").read_text(encoding="utf-8"))


def test_report_has_a_row_and_a_thumbnail_per_scan_and_lists_skipped_inputs(run):
    out, summary, page = run
    keys = [row["key"] for row in csv.DictReader((out / "results.csv").open())]
    assert len(keys) == 3 and "single" in keys
    table = page.tables["scans"]
    assert [row[0] for row in table] == keys
    assert [row[1] for row in table] == ["kaggle_3m" if key != "single" else "slice" for key in keys]
    images = [attrs["src"] for attrs in page.attrs("img")]
    assert len(images) == len(keys)
    for src in images:
        assert src.startswith(PNG_DATA)
        thumbnail = cv2.imdecode(np.frombuffer(base64.b64decode(src[len(PNG_DATA):]), np.uint8), cv2.IMREAD_COLOR)
        assert thumbnail is not None and 0 < max(thumbnail.shape[:2]) <= report_html.THUMBNAIL_PX
        assert thumbnail.std() > 0  # an overlay of a brain slice, not a flat image
    skipped = {Path(path).name: reason for path, reason in page.tables["skipped"]}
    assert set(skipped) == {"truncated.png", "notes.txt"}
    assert "unsupported file type" in skipped["notes.txt"]
    assert skipped == {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}


def test_report_header_shows_backend_precision_and_the_manifest_hash(run):
    _, summary, page = run
    text = " ".join(page.text)
    backend = summary["backend"]
    assert backend["backend"] in text and (backend.get("provider") or backend["device"]) in text
    assert f"Precision {summary['precision']}" in " ".join(text.split())
    sha = summary["manifest_sha256"]
    assert len(sha) == 64 and sha[: report_html.SHORT_SHA] in text and sha not in text
    assert any(attrs.get("title") == sha for attrs in page.attrs("code"))
    assert summary["postprocessing"]["description"] in text
    assert not page.attrs("script") and not page.attrs("link")  # stands alone


def test_every_link_is_relative_and_points_at_a_file_under_out(run):
    out, _, page = run
    hrefs = [attrs["href"] for attrs in page.attrs("a")]
    for href in hrefs:
        parts = urlsplit(href)
        assert not parts.scheme and not parts.netloc and not href.startswith("/"), href
        assert (out / unquote(parts.path)).is_file(), f"{href} is not a file under {out}"
    for key in [row[0] for row in page.tables["scans"]]:
        prefix = f"{key}.png" if key == "single" else f"{key}/"
        assert any(h.startswith(f"overlays/{prefix}") for h in hrefs) and any(h.startswith(f"masks/{prefix}")
                                                                               for h in hrefs), key


def _mask(path: Path, pixels: int) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask.flat[:pixels] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def _overlay(path: Path, shade: int, size: tuple[int, int] = (400, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), shade, np.uint8))


def test_kaggle_slice_with_most_tumour_is_shown_else_the_middle_one_in_slice_number_order(tmp_path):
    for name, pixels in (("p_1", 0), ("p_2", 5), ("p_10", 20)):
        _mask(tmp_path / "masks" / "a" / f"{name}.png", pixels)
        _mask(tmp_path / "masks" / "b" / f"{name}.png", 0)
        for key in ("a", "b"):
            _overlay(tmp_path / "overlays" / key / f"{name}.png", 40)
    rows = [{"key": key, "kind": "kaggle_3m", "slices": 3, "tumour_pixels": 25, "qc_flag": ""} for key in ("a", "b")]
    page = _Page(report_html.write_report_html(tmp_path, {"skipped": []}, rows).read_text())
    hrefs = [attrs["href"] for attrs in page.attrs("a")]
    assert "overlays/a/p_10.png" in hrefs and "masks/a/p_10.png" in hrefs
    assert "overlays/b/p_2.png" in hrefs  # p_1, p_2, p_10: the middle is p_2, not the lexical p_10
    thumbnail = cv2.imdecode(np.frombuffer(base64.b64decode(page.attrs("img")[0]["src"][len(PNG_DATA):]), np.uint8),
                             cv2.IMREAD_COLOR)
    assert thumbnail.shape[:2] == (report_html.THUMBNAIL_PX, report_html.THUMBNAIL_PX // 2)  # from 400 x 200


def test_volumes_without_overlays_flags_odd_keys_and_the_thumbnail_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "MAX_THUMBNAILS", 1)
    (tmp_path / "volumes").mkdir()
    (tmp_path / "volumes" / "case #1.nii.gz").write_bytes(b"stand-in")
    _overlay(tmp_path / "overlays" / "x<b>.png", 90)
    rows = [
        {"key": "case #1", "kind": "nifti", "tumour_volume_ml": 1.5, "tumour_pixels": 9, "qc_flag": "disagree"},
        {"key": "x<b>", "kind": "slice", "tumour_volume_ml": None, "tumour_pixels": 7, "qc_flag": ""},
    ]
    text = report_html.write_report_html(tmp_path, {"skipped": []}, rows).read_text()
    page = _Page(text)
    assert "<b>" not in text and "x&lt;b&gt;" in text
    hrefs = [attrs["href"] for attrs in page.attrs("a")]
    assert "volumes/case%20%231.nii.gz" in hrefs and "overlays/x%3Cb%3E.png" in hrefs
    assert [row[3] for row in page.tables["scans"]] == ["1.500 mL", "7 px"]
    assert [attrs.get("class") for name, attrs in page.tags if name == "tr"][1:] == ["flagged", None]
    words = " ".join(" ".join(page.text).split())
    assert "no overlay written" in words and "first 1 of 2 scans" in words and not page.attrs("img")
    assert "No input was skipped." in words


def test_a_dicom_scans_entry_links_its_seg_only_when_the_run_wrote_one(tmp_path):
    written = ("ct/case 1", "x<b>#2")  # their SEG is there; "ct/no-seg" was run without a manifest sha256
    for key in (*written, "ct/no-seg"):
        (tmp_path / "volumes" / f"{key}.nii.gz").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "volumes" / f"{key}.nii.gz").write_bytes(b"stand-in")
    for key in written:
        (tmp_path / "volumes" / f"{key}_seg.dcm").write_bytes(b"stand-in")
    (tmp_path.parent / f"{tmp_path.name}-outside_seg.dcm").write_bytes(b"stand-in")  # a tampered key's target
    rows = [{"key": key, "kind": "dicom", "tumour_pixels": 1, "qc_flag": ""}
            for key in (*written, "ct/no-seg", f"../{tmp_path.name}-outside")]
    page = _Page(report_html.write_report_html(tmp_path, {"skipped": []}, rows).read_text())
    assert [row[-1] for row in page.tables["scans"]] == ["volume DICOM SEG", "volume DICOM SEG", "volume", "none"]
    segs = [attrs["href"] for attrs in page.attrs("a") if attrs["href"].endswith(".dcm")]
    assert segs == ["volumes/ct/case%201_seg.dcm", "volumes/x%3Cb%3E%232_seg.dcm"]


CAPTION_KEYS = ("BraTS-GLI-00001-000", "patient_0001/series_12/BraTS-GLI-00001-000-followup", "a<b>&c_d")


def _captioned_scans(out: Path) -> list[dict]:
    """Rows with long separated keys, a kaggle_3m scan whose caption names its slice, and a 32-letter word."""
    for key in (*CAPTION_KEYS, "0123456789abcdef0123456789abcdef"):
        _overlay(out / "overlays" / f"{key}.png", 60, (32, 32))
    _mask(out / "masks" / "TCGA_CS_4941" / "TCGA_CS_4941_7.png", 5)
    _overlay(out / "overlays" / "TCGA_CS_4941" / "TCGA_CS_4941_7.png", 60, (32, 32))
    rows = [{"key": key, "kind": "brats", "qc_flag": ""} for key in CAPTION_KEYS]
    rows[1]["qc_flag"] = "disagree"
    return [*rows, {"key": "TCGA_CS_4941", "kind": "kaggle_3m", "qc_flag": "disagree"},
            {"key": "0123456789abcdef0123456789abcdef", "kind": "slice", "qc_flag": ""}]


def test_captions_offer_line_breaks_only_after_separators_and_never_split_a_word(tmp_path):
    text = report_html.write_report_html(tmp_path, {"skipped": []}, _captioned_scans(tmp_path)).read_text()
    captions = re.findall(r"<figcaption[^>]*>(.*?)</figcaption>", text)
    assert captions[0] == "BraTS-<wbr>GLI-<wbr>00001-<wbr>000"
    assert captions[1].startswith("patient_<wbr>0001/<wbr>series_<wbr>12/<wbr>BraTS-<wbr>GLI-")
    assert captions[2] == "a&lt;b&gt;&amp;c_<wbr>d"
    assert captions[3].startswith("TCGA_<wbr>CS_<wbr>4941\N{NO-BREAK SPACE}·<wbr> slice\N{NO-BREAK SPACE}7 ")
    for caption in captions:
        assert all(before[-1] in "/-_·" for before in caption.split("<wbr>")[:-1]), caption
    titles = [attrs["title"] for attrs in _Page(text).attrs("figcaption")]
    assert titles[:3] == list(CAPTION_KEYS) and titles[3] == "TCGA_CS_4941\N{NO-BREAK SPACE}· slice\N{NO-BREAK SPACE}7"
    style = re.search(r"figcaption \{([^}]*)\}", text).group(1)
    assert not re.search(r"word-break|overflow-wrap|word-wrap|hyphens", style), style  # the defaults split no word
    assert "text-overflow: ellipsis" in style and "overflow: hidden" in style  # a 32-letter word is cut, not spilled


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed here (Debian package 'chromium'); the HTML structure tests still run")
    return browser


def _headless(browser: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                           *arguments], capture_output=True, text=True, timeout=120, check=False)


# Test-only: the report has no script; this copy of it records, per caption, its text and where each line starts
_CAPTION_LINES = """<script>
const captions = [...document.querySelectorAll("figcaption")].map(caption => {
  let text = "", top = null;
  const starts = [], walker = document.createTreeWalker(caption, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (rect && rect.width > 0) {  // a space collapsed or hung at a line's end has no box of its own
        if (top !== null && rect.top > top + 1) starts.push(text.length);
        top = rect.top;
      }
      text += node.data[i];
    }
  }
  return {text, starts, clipped: caption.scrollWidth > caption.clientWidth};
});
const out = document.createElement("pre");
out.id = "caption-lines";
out.textContent = JSON.stringify(captions);
document.body.append(out);
</script>"""


def test_chromium_ends_no_caption_line_inside_a_word(tmp_path):
    browser = _chromium()
    report = report_html.write_report_html(tmp_path, {"skipped": []}, _captioned_scans(tmp_path))
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _CAPTION_LINES + "</body>"), encoding="utf-8")
    done = _headless(browser, tmp_path / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="caption-lines">(.*?)</pre>', done.stdout, re.S)
    assert found, f"Chromium ran no probe: {done.stderr[-2000:]}"
    captions = json.loads(html.unescape(found.group(1)))
    assert [c["text"].split(" ")[0] for c in captions[:3]] == list(CAPTION_KEYS)
    assert len(captions[1]["starts"]) >= 2  # the long key does wrap in a 170 px card
    for caption in captions:
        text = caption["text"]
        for start in caption["starts"]:
            assert text[start - 1] in " /-_·" or text[start] == " ", f"{text[:start]!r} | {text[start:]!r}"
    assert captions[-1]["clipped"] and not any(caption["clipped"] for caption in captions[:-1])


def test_report_module_imports_without_torch():
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
                           "import brainseg.runtime.outputs.report_html"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_chromium_renders_the_report_as_a_non_blank_page(run, tmp_path):
    browser = _chromium()
    out, _, _ = run
    shot = tmp_path / "report.png"
    _headless(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,900",
              (out / "report.html").as_uri())
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None, f"Chromium wrote no screenshot at {shot}"
    assert image.shape[:2] == (900, 1200)
    assert image.std() > 5 and len(np.unique(image.reshape(-1, 3), axis=0)) > 1
