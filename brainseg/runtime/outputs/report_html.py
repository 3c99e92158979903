"""`report.html`: one page that shows a seg-run output folder at a glance, with no other file needed.

seg-run writes it under `--out` after `results.csv` and `summary.json`:

- a header with the run summary (backend and provider, precision, the artifacts' manifest sha256,
  post-processing, scans done / resumed / skipped, slices, slices/s, wall seconds);
- a table with one row per scan (its results.csv numbers, the QC flag highlighted) and relative
  links to the scan's overlay, its mask or volume file and, for a DICOM series, its DICOM SEG,
  each only when that file is under `--out`;
- a thumbnail per scan (at most MAX_THUMBNAILS of them) of the overlay of the slice with the
  most tumour: volume scans and single slices have one overlay already; for a kaggle_3m scan the
  slice is picked by counting non-zero pixels in its mask PNGs (the middle slice when none has any);
  its caption wraps only after a space or a separator ('/', '-', '_', '·'), never inside a word;
- every skipped input with its reason.

The page stands alone: thumbnails are embedded as base64 PNG, the style is inline, and there is
no script and no external resource. Every value from the summary or the rows is HTML-escaped,
every link is percent-encoded. Never imports torch.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from brainseg.data.names import natural_key
from brainseg.fileio import write_atomic
from brainseg.runtime.outputs import VOLUME_KINDS, ScanOutputError, safe_output_path

REPORT_NAME = "report.html"
MAX_THUMBNAILS = 200  # beyond this the page gets slow to load; the table still lists every scan
THUMBNAIL_PX = 160  # long side of an embedded overlay thumbnail, in pixels
SHORT_SHA = 12
# a caption may wrap after these (and at spaces); a word between them is never split
_CAPTION_BREAK = re.compile(r"(?<=[/\-_·])(?!\Z)")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.5em 0 .5em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; margin: 0; }
dt { font-weight: 600; color: #555; } dd { margin: 0; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: .25em .5em; }
th { background: #f0f0f0; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fde8e6; } .flag { color: #fff; background: #c0392b; border-radius: 3px; padding: 0 .4em; }
.gallery { display: flex; flex-wrap: wrap; gap: .8em; }
figure { margin: 0; width: 170px; } figure img { display: block; max-width: 160px; border: 1px solid #ccc; }
figcaption { font-size: .85em; overflow: hidden; text-overflow: ellipsis; }
.missing { color: #777; font-style: italic; } .bad { color: #a00; }
"""


@dataclass(frozen=True)
class _ScanFiles:
    """Where one scan's outputs are, relative to `out` (None for a file that is not there)."""

    overlay: str | None
    output: str | None  # the mask PNG (of the picked slice for kaggle_3m) or the volume NIfTI
    slice_name: str | None = None  # kaggle_3m: the slice shown
    dicom_seg: str | None = None  # a DICOM series' `volumes/<key>_seg.dcm`


def write_report_html(out: Path, summary: dict, rows: list[dict]) -> Path:
    """Write `out/report.html` atomically and return its path.

    `summary` is the dict seg-run writes to summary.json; `rows` are the results.csv rows as
    dicts (`outputs.collect_rows`), in table order. Reads the overlay and mask PNGs under `out`.
    """
    out = Path(out)
    files = [_locate(out, row) for row in rows]
    page = "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        "<title>seg-run report</title>\n<style>", _STYLE, "</style>\n</head>\n<body>\n",
        _summary_section(out, summary, len(rows)),
        _scans_table(rows, files),
        _gallery(out, rows, files),
        _skipped_table(summary.get("skipped") or []),
        "</body>\n</html>\n",
    ])
    write_atomic(path := out / REPORT_NAME, page)
    return path


BRATS_LABEL_TEXT = {"2021": "BraTS 2021 convention: necrotic core 1, oedema 2, enhancing tumour 4",
                    "2023": "BraTS 2023 convention: NETC 1, SNFH 2, enhancing tumour 3"}


def _summary_section(out: Path, summary: dict, rows: int) -> str:
    backend = summary.get("backend") or {}
    where = backend.get("provider") or backend.get("device")
    sha = str(summary.get("manifest_sha256") or "")
    skipped = len(summary.get("skipped") or [])
    post = (summary.get("postprocessing") or {}).get("description")
    timings = summary.get("timings_s") or {}
    items = [
        ("Backend", _text(backend.get("backend", "?")) + (f" ({_text(where)})" if where else "")),
        ("Precision", _text(summary.get("precision", "?"))),
        ("Artifacts", f'manifest sha256 <code title="{_attr(sha)}">{_text(sha[:SHORT_SHA])}</code>'),
        ("Post-processing", _text(post) if post else '<span class="missing">not recorded</span>'),
        *([("BraTS labels", _text(BRATS_LABEL_TEXT.get(str(labels), labels)))]
          if (labels := summary.get("brats_labels")) else []),
        ("Scans", f"{_text(summary.get('scans', rows))} found: {_text(summary.get('done', 0))} done, "
                  f"{_text(summary.get('resumed', 0))} resumed from an earlier run, {skipped} input(s) skipped"),
        ("Slices", _text(summary.get("slices", 0))),
        ("Slices/s", _text(summary.get("slices_per_s", 0))),
        ("Wall seconds", _text(timings.get("wall", "?"))),
    ]
    status = ("every input was segmented" if not skipped
              else f'<span class="bad">{skipped} input(s) skipped</span> (exit code 1)')
    listing = "".join(f"<dt>{name}</dt><dd>{value}</dd>\n" for name, value in items)
    tables = [f'<a href="{_href(name)}">{name}</a>' for name in ("results.csv", "summary.json") if _existing(out, name)]
    also = f" Also {' and '.join(tables)}." if tables else ""
    return (f"<h1>seg-run report</h1>\n<p>Output folder <code>{_text(summary.get('out', ''))}</code>: "
            f"{status}.{also}</p>\n<dl>\n{listing}</dl>\n")


def _scans_table(rows: list[dict], files: list[_ScanFiles]) -> str:
    if not rows:
        return '<h2>Scans (0)</h2>\n<p class="missing">No scan was segmented.</p>\n'
    head = ("<tr><th>Scan</th><th>Kind</th><th>Slices</th><th>Tumour</th><th>Largest component (px)</th>"
            "<th>Max probability</th><th>Mean disagreement</th><th>QC</th><th>Outputs</th></tr>")
    body = "".join(_scan_row(row, where) for row, where in zip(rows, files, strict=True))
    return (f'<h2>Scans ({len(rows)})</h2>\n<table id="scans">\n<thead>{head}</thead>\n'
            f"<tbody>\n{body}</tbody>\n</table>\n")


def _scan_row(row: dict, where: _ScanFiles) -> str:
    flag = row.get("qc_flag") or ""
    volume = row.get("tumour_volume_ml")
    tumour = f"{volume:.3f} mL" if isinstance(volume, int | float) else f"{_text(row.get('tumour_pixels', '?'))} px"
    cells = [
        f"<td>{_text(row.get('key', ''))}</td>",
        f"<td>{_text(row.get('kind', ''))}</td>",
        f'<td class="num">{_text(row.get("slices", ""))}</td>',
        f'<td class="num">{tumour}</td>',
        f'<td class="num">{_text(row.get("largest_component_pixels", ""))}</td>',
        f'<td class="num">{_fixed(row.get("max_probability"))}</td>',
        f'<td class="num">{_fixed(row.get("mean_disagreement"))}</td>',
        f"<td>{_flag(flag)}</td>",
        f"<td>{_links(where)}</td>",
    ]
    opening = '<tr class="flagged">' if flag else "<tr>"
    return f"{opening}{''.join(cells)}</tr>\n"


def _flag(flag: str) -> str:
    return f'<span class="flag">{_text(flag)}</span>' if flag else ""


def _links(where: _ScanFiles) -> str:
    title = f' title="slice {_attr(where.slice_name)}"' if where.slice_name else ""
    links = []
    if where.overlay:
        links.append(f'<a href="{_href(where.overlay)}"{title}>overlay</a>')
    if where.output:
        what = "volume" if where.output.endswith(".nii.gz") else "mask"
        links.append(f'<a href="{_href(where.output)}"{title}>{what}</a>')
    if where.dicom_seg:
        links.append(f'<a href="{_href(where.dicom_seg)}">DICOM SEG</a>')
    return " ".join(links) or '<span class="missing">none</span>'


def _gallery(out: Path, rows: list[dict], files: list[_ScanFiles]) -> str:
    if not rows:
        return ""
    shown = min(len(rows), MAX_THUMBNAILS)
    note = (f"<p>Thumbnails of the first {shown} of {len(rows)} scans; the table links every scan's overlay.</p>\n"
            if shown < len(rows) else "")
    figures = "".join(_figure(out, row, where) for row, where in zip(rows[:shown], files[:shown], strict=True))
    return (f"<h2>Overlays: the slice with the most tumour</h2>\n{note}<p>Red: tumour outline; yellow: "
            f'high model disagreement.</p>\n<div class="gallery">\n{figures}</div>\n')


def _figure(out: Path, row: dict, where: _ScanFiles) -> str:
    key = str(row.get("key", ""))
    if where.overlay is None:
        body = '<span class="missing">no overlay written (seg-run --no-overlays)</span>'
    else:
        uri = _thumbnail_uri(out / where.overlay)
        body = (f'<img src="{uri}" alt="overlay of {_attr(key)}">' if uri
                else '<span class="bad">overlay could not be read</span>')
    parts = [key]
    if where.slice_name:  # no-break spaces: a line never ends before '·' or between "slice" and its name
        parts += ["\N{NO-BREAK SPACE}· slice\N{NO-BREAK SPACE}", _slice_label(row, where.slice_name)]
    caption = "".join(_wrappable(part) for part in parts)
    if row.get("qc_flag"):
        caption += " " + _flag(row["qc_flag"])
    return f'<figure>{body}<figcaption title="{_attr("".join(parts))}">{caption}</figcaption></figure>\n'


def _wrappable(value: str) -> str:
    """`value` escaped, with a `<wbr>` after each separator: the caption's CSS splits no word, so a
    long key such as "BraTS-GLI-00001-000" wraps only at a space or there; a word wider than the
    card ends in an ellipsis (the whole caption is in the figcaption's title)."""
    return "<wbr>".join(_text(part) for part in _CAPTION_BREAK.split(value))


def _slice_label(row: dict, slice_name: str) -> str:
    """"7" for the slice "TCGA_CS_4941_7" of the scan "TCGA_CS_4941" (kaggle_3m names repeat the key)."""
    prefix = str(row.get("key", "")).rsplit("/", 1)[-1] + "_"
    return slice_name[len(prefix):] if slice_name.startswith(prefix) and len(slice_name) > len(prefix) else slice_name


def _skipped_table(skipped: list[dict]) -> str:
    if not skipped:
        return "<h2>Skipped inputs (0)</h2>\n<p>No input was skipped.</p>\n"
    body = "".join(f"<tr><td>{_text(item.get('path', ''))}</td><td>{_text(item.get('reason', ''))}</td></tr>\n"
                   for item in skipped)
    return (f'<h2>Skipped inputs ({len(skipped)})</h2>\n<table id="skipped">\n'
            f"<thead><tr><th>Input</th><th>Reason</th></tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n")


def _locate(out: Path, row: dict) -> _ScanFiles:
    """The scan's overlay and mask/volume files that exist under `out` (see outputs.py's layout)."""
    key, kind = str(row.get("key", "")), row.get("kind")
    if kind == "kaggle_3m":
        name = _most_tumour_slice(out, key)
        if name is None:
            return _ScanFiles(None, None)
        return _ScanFiles(_existing(out, f"overlays/{key}/{name}.png"), _existing(out, f"masks/{key}/{name}.png"), name)
    if kind in VOLUME_KINDS:  # a BraTS-regions model writes the label map as <key>_seg
        output = _existing(out, f"volumes/{key}.nii.gz") or _existing(out, f"volumes/{key}_seg.nii.gz")
    else:
        output = _existing(out, f"masks/{key}.png")
    seg = _existing(out, f"volumes/{key}_seg.dcm") if kind == "dicom" else None  # written only with a manifest sha256
    return _ScanFiles(_existing(out, f"overlays/{key}.png"), output, dicom_seg=seg)


def _most_tumour_slice(out: Path, key: str) -> str | None:
    """Name of the kaggle_3m slice whose mask PNG has the most non-zero pixels; the middle one
    (in slice-number order) when none has any; None when the scan has no mask PNGs."""
    folder = _existing(out, f"masks/{key}")
    if folder is None:
        return None
    masks = sorted((p for p in Path(out, folder).glob("*.png") if p.is_file()), key=lambda p: natural_key(p.stem))
    if not masks:
        return None
    counts = [_tumour_pixels(path) for path in masks]
    best = int(np.argmax(counts))
    return masks[best if counts[best] > 0 else len(masks) // 2].stem


def _tumour_pixels(path: Path) -> int:
    """Non-zero pixels of a mask PNG; -1 when it cannot be read (never picked over a readable one)."""
    mask = _read_png(path, cv2.IMREAD_UNCHANGED)
    return -1 if mask is None else int(np.count_nonzero(mask))


def _thumbnail_uri(path: Path) -> str | None:
    """A `data:image/png;base64,...` URI of the PNG at `path`, shrunk to THUMBNAIL_PX on its long
    side; None when the file cannot be read as an image."""
    image = _read_png(path, cv2.IMREAD_COLOR)  # (H, W, 3) BGR, written back as BGR
    if image is None:
        return None
    height, width = image.shape[:2]
    scale = THUMBNAIL_PX / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii") if ok else None


def _read_png(path: Path, flags: int) -> np.ndarray | None:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, flags) if data.size else None


def _existing(out: Path, relative: str) -> str | None:
    """`relative` when it names something under `out` that exists; None otherwise, and for a name
    that is malformed or leads outside `out` (a tampered row record)."""
    try:
        return relative if safe_output_path(out, relative).exists() else None
    except ScanOutputError:
        return None


def _href(relative: str) -> str:
    return _attr(quote(relative))  # '/' kept; spaces, '#', '?', '%' in keys encoded


def _fixed(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else _text(value if value is not None else "")


def _text(value) -> str:
    return html.escape(str(value), quote=False)


def _attr(value) -> str:
    return html.escape(str(value), quote=True)
