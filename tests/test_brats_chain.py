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
