"""Every number in the README's results table is the value at its own key in the committed file named
beside it (KEYS says which key each number shows)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
SOURCE = re.compile(r"`(benchmarks/results/[^`]+)`")
DICE, VAL = ("dice_mean",), ("deployed_val",)
REGIONS = ("whole_tumour", "tumour_core", "enhancing_tumour")
RANGE = ("median", "min", "max")  # "3.12x (2.31-3.70)": median (lowest-highest round)

# Per results row (by the start of its first cell), where each number it shows is in the file it
# names, in the order the row shows them. JSON: the keys down to the value (an int indexes a list,
# "key=value" picks the list's item with that key); markdown: (section, the text before the colon
# of the line) and the first number after that colon.
KEYS: dict[str, list[tuple]] = {
    "**Held-out test Dice, 5 patients": [("deployed_test", "int8-cpu", *DICE), ("deployed_test", "fp32", *DICE),
                                         ("targets", "best_single_model_test_dice")],
    "**The Dice-latency front**": [("shipped", "test_dice_as_deployed"), ("best_member", "test_dice_fp32"),
                                   ("targets", "shipped_latency_vs_ensemble", "ensemble_test_dice"),
                                   *(("targets", "shipped_latency_vs_ensemble", "rounds", stat) for stat in RANGE),
                                   ("shipped", "front_row", "speedup_vs_eager_ensemble")],
    "The same 5 test patients with one FLAIR threshold": [("baseline", "tumour", "test_dice"),
                                                          ("margin", "tumour")],
    "Validation Dice, 5 patients": [(*VAL, name, *DICE) for name in ("pytorch-fp32", "fp32", "fp16", "int8",
                                                                     "int8-cpu")],
    "**Intensity shifts**, int8 CPU file": [("mean_dice", shift) for shift in (
        "original", "x0.3", "x0.5", "x1.5 clipped", "gamma 0.67", "gamma 1.5")] + [("worst_drop_of_mean",)]
    + [("worst_patient_drop", shift) for shift in ("x1.5 clipped", "gamma 0.67")],
    "Which intensity recipe ships": [("recipes", recipe, "dev", *key) for recipe in (
        "scale-gamma + slice_foreground", "curves + slice_foreground") for key in (
        ("mean_dice", "none"), ("mean_dice", "gamma 1.5"), ("targets_met",))],
    "*Sample v1*: intensity shifts before": [("mean_dice", shift) for shift in ("original", "x0.3", "x0.5",
                                                                                 "gamma 0.67")],
    "**BraTS sample, 2023 convention**": [("brats", "means", region, metric) for metric in (
        "lesion_wise_dice", "lesion_wise_hd95") for region in ("wt", "tc", "et")]
    + [("per_patient_dice", region) for region in REGIONS],
    "*Sample v1*: **BraTS sample**": [("test_region_dice", "int8-cpu", region) for region in REGIONS]
    + [("test_region_dice", "fp32", region) for region in REGIONS]
    + [("threshold_baseline_test_dice", region) for region in REGIONS],
    "`seg-run` over 20 BraTS-size cases": [("brats_peak_rss_gb",), ("voxels_per_s_ratio_brats_to_8bit", "each", 0),
                                           ("voxels_per_s_ratio_brats_to_8bit", "each", 1)],
    "`make demo`, whole command": [("wall_seconds",), ("stage_seconds", "train")],
    "The previous version's `make demo`": [("wall_seconds",), ("stage_seconds", "train")],
    "ONNX Runtime CPU, batch 1, median ms": [
        (0, "latency", "ensemble.fp32.onnx", "median_ms"),
        (0, "latency", "members in turn (fp32), threads asleep between ops", "median_ms"),
        (0, "latency", "ensemble.int8-cpu.onnx", "median_ms"), (0, "speedup_vs_fp32", "ensemble.int8-cpu.onnx")],
    "`seg-run` end to end over 1008 slices": [("end_to_end", "slices_per_s"), ("bare_inference", "slices_per_s"),
                                              ("end_to_end_share_of_bare",)],
    "`seg-run --ray local` against the local": [("ray_slices_per_s",), ("local_slices_per_s",),
                                                ("ray_share_of_local",)],
    "`seg-serve` on loopback": [("modes", "embedded", "targets", "batch1_p50_over_bare_ms"),
                                *(("modes", "embedded", "targets", "batch1_p50_over_bare_ms_rounds", stat)
                                  for stat in ("min", "max")),
                                ("modes", "embedded", "targets", "requests_per_s_c16_over_c1"),
                                ("modes", "embedded", "bare_batching_gain", "gain"), ("ray_over_embedded_c1_p50",)],
    "`seg-serve` against hostile clients": [
        *(("modes", mode, "hostile", "cases", "volume_bombs_x4", "slowest_s") for mode in ("embedded", "ray")),
        *(("modes", mode, "hostile", "cases", "volume_bombs_x4", "peak_rss_up_mb") for mode in ("embedded", "ray")),
        *(("modes", "embedded", "hostile", "cases", "stalled_uploads_x64", key) for key in ("healthz_s", "slice_s"))],
    "CPU targets, one seg-bench run": [("targets", target, stat) for target in (
        "compute_b1_vs_eager", "end_to_end_b1_vs_eager") for stat in RANGE],
    "The same run: that path over OpenVINO's default": [
        *(("targets", target, stat) for target in ("b1_vs_openvino_default", "int8_b8_vs_eager") for stat in RANGE),
        ("targets", "int8_b8_share_of_peak", "value"), ("test_dice", "best_path"), ("test_dice", "fp32_file")],
    "The same targets for the `full` preset": [
        *(("targets", target, stat) for target in ("compute_b1_vs_eager", "end_to_end_b1_vs_eager") for stat in RANGE),
        ("targets", "b1_vs_openvino_default", "median"), *(("targets", "int8_b8_vs_eager", stat) for stat in RANGE),
        ("targets", "int8_b8_share_of_peak", "value"), ("test_dice", "best_path"), ("test_dice", "fp32_file")],
    "Batch 1, mean latency, speed-up over PyTorch eager FP32": [
        ("Speed-ups", "onnxruntime int8, compute, batch 1"), ("Speed-ups", "onnxruntime int8, end-to-end, batch 1"),
        ("Speed-ups", "onnxruntime fp32, end-to-end, batch 1")],
    "What flip TTA costs, batch 1": [("What flip TTA costs", "onnxruntime int8, compute, batch 1"),
                                     ("What flip TTA costs", "onnxruntime int8, end-to-end, batch 1")],
}


def results_rows() -> list[list[str]]:
    """The cells of each body row of the first table under '## Results'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def shows(number: str, value: float) -> bool:
    """`number` as the README shows it is `value`, rounded to the shown decimals."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    return f"{float(value):.{decimals}f}" == number


def value_at(text: str, suffix: str, key: tuple):
    """The value at `key` in a results file's text (see KEYS)."""
    if suffix == ".md":
        section, label = key
        body = f"\n{text}".split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        lines = [line for line in body.splitlines() if line.startswith(f"- {label}: ")]
        assert len(lines) == 1, f"{len(lines)} lines of section {section!r} start with {label!r}"
        return NUMBER.findall(lines[0][len(f"- {label}: "):])[0]
    value = json.loads(text)
    for step in key:
        if isinstance(value, list) and isinstance(step, str):
            name, _, wanted = step.partition("=")
            [value] = [item for item in value if str(item.get(name)) == wanted]
        else:
            value = value[step]
    return value


def wrong_numbers(row: list[str], text: str, suffix: str) -> list[str]:
    """The numbers of `row` that are not the value at their KEYS key, each with what is there."""
    [keys] = [keys for start, keys in KEYS.items() if row[0].startswith(start)]
    numbers = [n for cell in row[1:-1] for n in NUMBER.findall(cell)]
    assert len(numbers) == len(keys), f"row {row[0]!r} shows {len(numbers)} numbers; KEYS has {len(keys)}"
    return [f"{number} (at {key}: {value_at(text, suffix, key)})" for number, key in zip(numbers, keys, strict=True)
            if not shows(number, value_at(text, suffix, key))]


def test_the_results_table_names_a_committed_file_on_every_row():
    rows = results_rows()
    assert len(rows) >= 4
    for row in rows:
        sources = SOURCE.findall(row[-1])
        assert sources, f"row {row[0]!r} names no file under benchmarks/results/"
        for source in sources:
            assert (ROOT / source).is_file(), f"row {row[0]!r}: {source} is not in the repository"


def test_every_number_in_the_results_table_is_the_value_at_its_key():
    rows = results_rows()
    for row in rows:
        [source] = SOURCE.findall(row[-1])  # KEYS' keys are in the one file the row names
        wrong = wrong_numbers(row, (ROOT / source).read_text(), Path(source).suffix)
        assert not wrong, f"row {row[0]!r}: {wrong} in {source}"
    assert sorted(KEYS) == sorted(start for start in KEYS if any(row[0].startswith(start) for row in rows))


def test_the_check_itself_can_fail():
    assert shows("0.9083", 0.90831) and shows("4.30", 4.3) and shows("1.45", "1.45")
    assert not shows("0.9084", 0.90831) and not shows("12", 1.2)
    text = json.dumps({"wall_seconds": 577.6, "stage_seconds": {"train": 771.9}})  # the two swapped
    row = ["`make demo`, whole command, seconds; of which training", "771.9; 577.6", "`x.json`"]
    assert wrong_numbers(row, text, ".json") == ["771.9 (at ('wall_seconds',): 577.6)",
                                                 "577.6 (at ('stage_seconds', 'train'): 771.9)"]
    markdown = "## Speed-ups\n\n- a, b: 2.56x eager\n- c, d: 2.25x eager\n\n## Next\n\n- a, b: 9x\n"
    assert value_at(markdown, ".md", ("Speed-ups", "c, d")) == "2.25"
    load = json.dumps({"load": [{"concurrency": 1, "p50_ms": 4.0}, {"concurrency": 32, "p50_ms": 9.0}]})
    assert value_at(load, ".json", ("load", "concurrency=32", "p50_ms")) == 9.0


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
