"""A BraTS-regions model through the whole chain on tiny cases: train -> export -> seg-run -> BraTS label maps."""

import numpy as np
import pytest
from data_files import BRATS_SHAPE, make_brats, nib

pytest.importorskip("onnxruntime")
if nib is None:
    pytest.skip("nibabel is not installed (the nifti extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def brats_chain(tmp_path_factory):
    from brainseg.export.pipeline import ExportOptions, export_run
    from brainseg.runtime.batch.pipeline import RunOptions, segment
    from brainseg.train.config import make_config
    from brainseg.train.run import train_run

    root = tmp_path_factory.mktemp("brats")
    data = make_brats(root / "data", cases=6)
    cfg = make_config("quick", models=("unet",), epochs=2, patience=2, img_size=32, batch_size=4,
                      unet_base_channels=8, layout="brats", target="brats-regions")
    train_run(data=str(data), out=root / "run", cfg=cfg, progress=False)
    assert not (root / "run" / ".slices").exists()  # the training slice cache goes when the run is done
    result = export_run(root / "run", root / "artifacts", ExportOptions(tta="none", components="none"))
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    summary = segment(cases, root / "artifacts", root / "out", RunOptions(overwrite=True, save_probability=True))
    return data, root, result, summary


def test_the_export_scores_and_gates_every_region(brats_chain):
    from brainseg.artifacts.manifest import Manifest

    _, root, result, _ = brats_chain
    manifest = Manifest.load(root / "artifacts")
    assert manifest.input.dtype == "float32" and manifest.input.channels == 4 and manifest.classes == 3
    row = result.table["fp32"]
    assert set(row["region_dice"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    assert set(row["region_hd95"]) == set(row["region_dice"]) and row["region_hd95"]["whole_tumour"] == row["hd95_mean"]
    report = (root / "artifacts" / "accuracy.md").read_text()
    assert "enhancing_tumour" in report and "HD95 mean, mm, per region" in report


def test_seg_run_writes_brats_label_maps_on_the_input_grid(brats_chain):
    from brainseg.artifacts.manifest import Manifest
    from brainseg.runtime.outputs import brats_label_map

    data, root, _, summary = brats_chain
    threshold = Manifest.load(root / "artifacts").threshold
    assert summary.done == 6 and not summary.skipped
    for case in sorted(p.name for p in data.iterdir() if p.is_dir()):
        written = nib.load(str(root / "out" / "volumes" / f"{case}_seg.nii.gz"))
        source = nib.load(str(data / case / f"{case}_flair.nii.gz"))
        labels = np.asarray(written.dataobj)
        assert labels.shape == BRATS_SHAPE and written.get_data_dtype() == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 4}
        np.testing.assert_allclose(written.affine, source.affine)
        # the label map is the three predicted regions (written apart as probabilities) in BraTS labels
        probability = np.asarray(nib.load(str(root / "out" / "volumes" / f"{case}_probability.nii.gz")).dataobj)
        assert probability.shape == (*BRATS_SHAPE, 3)
        np.testing.assert_array_equal(labels, brats_label_map(probability >= threshold))
    report = (root / "out" / "report.html").read_text()
    assert all(f'href="volumes/{case.name}_seg.nii.gz"' in report for case in data.iterdir() if case.is_dir())
    rows = (root / "out" / "results.csv").read_text().splitlines()
    assert "wt_volume_ml" in rows[0] and len(rows) == 7


def test_a_4d_nifti_of_the_sequences_gives_the_case_folders_label_map(brats_chain, tmp_path):
    from brainseg.artifacts.manifest import Manifest
    from brainseg.runtime.batch.pipeline import RunOptions, segment

    data, root, _, _ = brats_chain
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    modalities = Manifest.load(root / "artifacts").input.modalities
    sequences = [nib.load(str(case / f"{case.name}_{m}.nii.gz")) for m in modalities]
    stacked = np.stack([np.asarray(s.dataobj, np.float32) for s in sequences], axis=-1)  # (X, Y, Z, 4)
    nib.save(nib.Nifti1Image(stacked, sequences[0].affine), str(tmp_path / "stacked.nii.gz"))
    summary = segment([tmp_path / "stacked.nii.gz"], root / "artifacts", tmp_path / "out", RunOptions())
    assert summary.done == 1 and not summary.skipped
    from_4d = nib.load(str(tmp_path / "out" / "volumes" / "stacked_seg.nii.gz"))
    from_folder = nib.load(str(root / "out" / "volumes" / f"{case.name}_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(from_4d.dataobj), np.asarray(from_folder.dataobj))
    np.testing.assert_allclose(from_4d.affine, from_folder.affine)


@pytest.fixture(scope="module")
def chain_2023(tmp_path_factory):
    """The demo's path on the built-in sample in the BraTS 2023 convention (`BraTS-GLI-00001-000-t1n.nii.gz`,
    enhancing tumour 3): seg-sample, then the same tiny training and export, with the default modality names."""
    from typer.testing import CliRunner

    from brainseg.cli import app
    from brainseg.export.pipeline import ExportOptions, export_run
    from brainseg.train.config import make_config
    from brainseg.train.run import train_run

    root = tmp_path_factory.mktemp("brats2023")
    written = CliRunner().invoke(app, ["sample-data", str(root / "data"), "--layout", "brats", "--brats-year", "2023",
                                       "--patients", "6", "--slices", "8", "--size", "32"])
    assert written.exit_code == 0, written.output
    cfg = make_config("quick", models=("unet",), epochs=2, patience=2, img_size=32, batch_size=4,
                      unet_base_channels=8, layout="brats", target="brats-regions")
    train_run(data=str(root / "data"), out=root / "run", cfg=cfg, progress=False)
    export_run(root / "run", root / "artifacts", ExportOptions(tta="none", components="none"))
    return root


def _labels(folder, case: str) -> np.ndarray:
    return np.asarray(nib.load(str(folder / "volumes" / f"{case}_seg.nii.gz")).dataobj)


def test_the_training_convention_is_recorded_and_written_by_default_and_brats_labels_overrides_it(
        brats_chain, chain_2023, tmp_path):
    import csv
    import json

    from brainseg.artifacts.manifest import Manifest
    from brainseg.runtime.batch.pipeline import RunOptions, segment

    data, root, _, _ = brats_chain
    assert json.loads((root / "run" / "run.json").read_text())["brats_labels"] == "2021"
    assert json.loads((chain_2023 / "run" / "run.json").read_text())["brats_labels"] == "2023"
    assert Manifest.load(root / "artifacts").brats_labels == "2021"
    assert Manifest.load(chain_2023 / "artifacts").brats_labels == "2023"
    cases = sorted(p for p in (chain_2023 / "data").iterdir() if p.is_dir())
    written = {}
    for name, artifacts, labels in (("2023-default", chain_2023 / "artifacts", None),
                                    ("2023-as-2021", chain_2023 / "artifacts", "2021"),
                                    ("2021-as-2023", root / "artifacts", "2023")):
        summary = segment(cases, artifacts, tmp_path / name, RunOptions(brats_labels=labels))
        assert summary.done == 6 and not summary.skipped
        written[name] = {case.name: _labels(tmp_path / name, case.name) for case in cases}
        rows = list(csv.DictReader((tmp_path / name / "results.csv").open()))
        assert {row["brats_labels"] for row in rows} == {labels or "2023"}  # every row names its convention
    found = {name: set().union(*(np.unique(m).tolist() for m in maps.values())) for name, maps in written.items()}
    assert 3 in found["2023-default"] and 4 not in found["2023-default"], found  # ET written as 3
    assert 4 in found["2023-as-2021"] and 3 not in found["2023-as-2021"], found
    assert 3 in found["2021-as-2023"] and 4 not in found["2021-as-2023"], found
    for case in written["2023-default"]:  # the same model's maps in either convention: only ET's value differs
        as_2021 = np.where(written["2023-default"][case] == 3, 4, written["2023-default"][case])
        np.testing.assert_array_equal(as_2021, written["2023-as-2021"][case])
    # the 2021 model by default writes 4 (brats_chain's own run, above); over one folder the two do not mix
    from brainseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"other BraTS labels \(--brats-labels\): .* has 2023, this run 2021"):
        segment(cases, chain_2023 / "artifacts", tmp_path / "2023-default", RunOptions(brats_labels="2021"))


def test_submission_holds_one_int8_label_map_per_case_and_a_resume_completes_it(brats_chain, tmp_path):
    from brainseg.errors import ConfigError
    from brainseg.runtime.batch.pipeline import RunOptions, segment

    data, root, _, _ = brats_chain
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    out, submission = tmp_path / "out", tmp_path / "submission"
    summary = segment(cases[:4], root / "artifacts", out, RunOptions(submission=submission))
    assert summary.done == 4 and sorted(p.name for p in submission.iterdir()) == [
        f"{case.name}.nii.gz" for case in cases[:4]]
    for case in cases[:4]:
        written = nib.load(str(submission / f"{case.name}.nii.gz"))
        source = nib.load(str(case / f"{case.name}_flair.nii.gz"))
        assert written.get_data_dtype() == np.int8 and written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj), _labels(out, case.name))
    # a resume with --submission into a new folder: the done cases' files come from their label maps
    again = segment(cases, root / "artifacts", out, RunOptions(submission=tmp_path / "again"))
    assert (again.done, again.resumed) == (2, 4)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(f"{c.name}.nii.gz" for c in cases)
    for case in cases:
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "again" / f"{case.name}.nii.gz")).dataobj),
                                      _labels(out, case.name))
    twin = tmp_path / "twin" / cases[0].name  # a second case of the same name elsewhere
    twin.parent.mkdir()
    import shutil

    shutil.copytree(cases[0], twin)
    with pytest.raises(ConfigError, match=f"several BraTS cases are named {cases[0].name}.nii.gz"):
        segment([cases[0], twin], root / "artifacts", tmp_path / "o2", RunOptions(submission=tmp_path / "s2"))


def test_seg_eval_reports_the_challenges_lesion_wise_figures_per_patient_and_their_means(brats_chain, tmp_path):
    pytest.importorskip("panoptica", reason="BraTS lesion-wise metrics need panoptica (the eval extra)")
    from brainseg.evaluation import brats_metrics
    from brainseg.evaluation.evaluate import EvalOptions, evaluate

    data, root, _, _ = brats_chain
    report = evaluate(data, root / "artifacts", tmp_path / "eval", EvalOptions(split="all")).report
    entries = report["per_patient"]
    assert len(entries) == 6 and all(set(e["brats"]) == {"wt", "tc", "et"} for e in entries)
    assert all(set(e["brats"]["et"]) == set(brats_metrics.METRICS) for e in entries)
    dice = [e["brats"]["wt"]["lesion_wise_dice"] for e in entries]
    assert report["brats"]["means"]["wt"]["lesion_wise_dice"] == pytest.approx(float(np.mean(dice)))
    assert report["brats"]["hd95_unit"] == "mm" and report["dice_mean"] is not None  # the gate's Dice stays
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "As the BraTS challenge scores it" in text and "| ET |" in text and "373" in text


def test_seg_serve_answers_a_volume_with_a_label_map_in_the_training_convention_or_the_one_asked(
        chain_2023, tmp_path):
    import socket
    import urllib.request

    pytest.importorskip("uvicorn", reason="seg-serve needs the serve extra")
    from brainseg.serve.options import ServeOptions
    from brainseg.serve.service import running_service

    case = sorted(p for p in (chain_2023 / "data").iterdir() if p.is_dir())[0]
    sequences = [nib.load(str(case / f"{case.name}-{m}.nii.gz")) for m in ("t1n", "t1c", "t2w", "t2f")]
    stacked = np.stack([np.asarray(s.dataobj, np.float32) for s in sequences], axis=-1)
    nib.save(nib.Nifti1Image(stacked, sequences[0].affine), str(tmp_path / "case.nii.gz"))
    body = (tmp_path / "case.nii.gz").read_bytes()
    answers = {}
    for asked in (None, "2021"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with running_service(chain_2023 / "artifacts", ServeOptions(port=port, brats_labels=asked),
                             startup_timeout_s=180) as url:
            request = urllib.request.Request(f"{url}/v1/segment", data=body,
                                             headers={"Content-Type": "application/gzip"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                (tmp_path / f"{asked}.nii.gz").write_bytes(answer.read())
                answers[asked] = answer.headers["X-BraTS-Labels"], np.asarray(
                    nib.load(str(tmp_path / f"{asked}.nii.gz")).dataobj)
    assert answers[None][0] == "2023" and answers["2021"][0] == "2021"
    assert 3 in answers[None][1] and 4 not in answers[None][1]
    np.testing.assert_array_equal(np.where(answers[None][1] == 3, 4, answers[None][1]), answers["2021"][1])
