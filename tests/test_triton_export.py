"""seg-export triton: repositories written from a real exported artifacts folder, read back with Triton's own
model-config schema, compared with the manifest, and their graphs run with the shapes the configs declare.

No Triton server, TensorRT or GPU exists here: the TensorRT plan path is exercised with a fake engine file
and a provenance record written as the engine build writes it. Folders that a test changes are hard-linked
copies of the session's artifacts whose changed files are replaced, never written through the links.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorrt_standins as standins

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS, MANIFEST, provenance_file
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.sessions import ort_session, run
from brainseg.deploy import triton
from brainseg.deploy.triton import README, RECORD, TritonOptions, export_triton
from brainseg.deploy.triton_cli import triton_command, triton_main
from brainseg.deploy.triton_config import parse_pbtxt
from brainseg.errors import ArtifactError, BrainsegError, ConfigError
from brainseg.fileio import sha256_file

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the triton extra is not installed")
pytest.importorskip("onnx", reason="the export extra is not installed")

# The oracle for dtypes is written out here, not imported from the code under test.
TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}
NUMPY_TYPES = {name: np.dtype(dtype) for dtype, name in TRITON_TYPES.items()}


def raw_manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def config(repo, model) -> model_config_pb2.ModelConfig:
    return parse_pbtxt((repo / model / "config.pbtxt").read_text())


def type_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def accelerators(cfg) -> list:
    return list(cfg.optimization.execution_accelerators.gpu_execution_accelerator)


def replace(path, data: bytes | str) -> None:
    """Give `path` new contents without writing through a hard link shared with the session's artifacts."""
    path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def artifacts_copy(tiny_artifacts, tmp_path):
    """The session's artifacts, hard-linked into a folder a test may change (through `replace` only)."""
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, copy, copy_function=os.link)
    return copy


def edit_manifest(folder, change) -> None:
    raw = raw_manifest(folder)
    change(raw)
    replace(folder / MANIFEST, json.dumps(raw, indent=2))


def check_tensors(cfg, raw: dict, *, batch_in_dims: int | None = None) -> None:
    """The config's input and outputs against manifest.json read directly: names, dtypes and dims."""
    spec = raw["input"]
    lead = [] if batch_in_dims is None else [batch_in_dims]
    (image,) = cfg.input
    assert image.name == spec["name"] and type_name(image.data_type) == TRITON_TYPES[spec["dtype"]]
    assert list(image.dims) == [*lead, spec["height"], spec["width"], spec["channels"]]  # NHWC less N
    assert [o.name for o in cfg.output] == list(ENSEMBLE_OUTPUTS)
    classes = raw["outputs"]["probability"]["classes"]
    for output in cfg.output:
        assert type_name(output.data_type) == TRITON_TYPES[raw["outputs"][output.name]["dtype"]], output.name
        assert list(output.dims) == [*lead, classes, spec["height"], spec["width"]], output.name  # NCHW less N


# --- what a default repository holds --------------------------------------------------------------


def test_default_repository_serves_every_precision_that_passed(tiny_artifacts, tmp_path):
    raw = raw_manifest(tiny_artifacts)
    passed = [p for p, entry in raw["precisions"].items() if entry["passed"]]
    assert set(passed) == {"fp32", "int8"}, "the session's artifacts changed; this test expects fp32 and int8"
    repo = export_triton(tiny_artifacts, tmp_path / "repo")

    names = [f"brainseg-{p}" for p in passed]
    assert sorted(path.name for path in repo.path.iterdir()) == sorted([*names, README, RECORD])
    assert [m.name for m in repo.models] == names and repo.notes == []
    for precision, name in zip(passed, names, strict=True):
        cfg = config(repo.path, name)
        assert cfg.name == name
        assert (cfg.platform, cfg.backend) == ("onnxruntime_onnx", "onnxruntime")
        assert cfg.max_batch_size == 32
        check_tensors(cfg, raw)
        assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
        (group,) = cfg.instance_group
        assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (1, "KIND_GPU")
        source = raw["precisions"][precision]["targets"]["gpu"]["file"]
        assert sha256_file(repo.path / name / "1" / "model.onnx") == raw["files"][source]["sha256"]

    assert accelerators(config(repo.path, "brainseg-fp32")) == []
    (trt,) = accelerators(config(repo.path, "brainseg-int8"))
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "INT8"
    # the engine cache is the model's own, named by its file's sha256: no other model or export loads it
    int8_sha = sha256_file(repo.path / "brainseg-int8" / "1" / "model.onnx")
    assert trt.parameters["trt_engine_cache_path"] == f"/tmp/brainseg-ort-tensorrt-cache/brainseg-int8-{int8_sha[:16]}"
    assert trt.parameters["trt_profile_min_shapes"] == "image:1x64x64x3"
    assert trt.parameters["trt_profile_max_shapes"] == "image:32x64x64x3"


def test_readme_and_record_name_the_real_input_and_sources(tiny_artifacts, tmp_path):
    repo = export_triton(tiny_artifacts, tmp_path / "repo")
    text = (repo.path / README).read_text()
    assert f"tritonserver --model-repository {repo.path.resolve()}" in text
    assert "perf_analyzer -m brainseg-int8 --shape image:64,64,3 -b 32" in text
    assert "uint8 (N, 64, 64, 3)" in text
    record = json.loads((repo.path / RECORD).read_text())
    assert record["manifest_sha256"] == sha256_file(tiny_artifacts / MANIFEST)
    assert [m["source"] for m in record["models"]] == ["ensemble.fp32.onnx", "ensemble.int8.onnx"]


def test_copied_graphs_run_with_the_shapes_their_configs_declare(tiny_artifacts, tmp_path):
    repo = export_triton(tiny_artifacts, tmp_path / "repo", TritonOptions(kind="cpu"))
    for model in ("brainseg-fp32", "brainseg-int8"):
        cfg = config(repo.path, model)
        (image,) = cfg.input
        batch = 2  # max_batch_size > 0: the dims leave out the batch axis
        feed = np.random.default_rng(0).integers(0, 256, (batch, *image.dims)).astype(NUMPY_TYPES[
            type_name(image.data_type)])
        got = run(ort_session(repo.path / model / "1" / "model.onnx"), {image.name: feed})
        assert list(got) == [o.name for o in cfg.output]
        for output in cfg.output:
            assert got[output.name].shape == (batch, *output.dims), (model, output.name)
            assert got[output.name].dtype == NUMPY_TYPES[type_name(output.data_type)], (model, output.name)


def test_cpu_instances_serve_the_cpu_files_without_tensorrt(tiny_artifacts, tmp_path):
    raw = raw_manifest(tiny_artifacts)
    options = TritonOptions(precisions=("int8",), kind="cpu", instances=2, max_batch=16, preferred_batch=(16, 4),
                            max_queue_delay_us=500, name="seg")
    repo = export_triton(tiny_artifacts, tmp_path / "repo", options)
    cfg = config(repo.path, "seg-int8")
    assert [m.name for m in repo.models] == ["seg-int8"]
    (group,) = cfg.instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (2, "KIND_CPU")
    assert not cfg.HasField("optimization")
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    cpu_file = raw["precisions"]["int8"]["targets"]["cpu"]["file"]
    assert cpu_file != raw["precisions"]["int8"]["targets"]["gpu"]["file"]
    assert sha256_file(repo.path / "seg-int8" / "1" / "model.onnx") == raw["files"][cpu_file]["sha256"]


def test_fp16_model_asks_onnx_runtime_for_tensorrt_fp16(artifacts_copy, tmp_path):
    """The session's export has no fp16 file; the fp32 graph, listed as fp16, stands in for one."""
    fp16 = artifacts_copy / "ensemble.fp16.onnx"
    shutil.copyfile(artifacts_copy / "ensemble.fp32.onnx", fp16)

    def add_fp16(raw):
        raw["files"][fp16.name] = {**raw["files"]["ensemble.fp32.onnx"], "precision": "fp16"}
        targets = {target: {"file": fp16.name, "row": "fp16"} for target in ("gpu", "cpu")}
        raw["precisions"]["fp16"] = {"passed": True, "targets": targets}

    edit_manifest(artifacts_copy, add_fp16)
    repo = export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=("fp16",), max_batch=8))
    (trt,) = accelerators(config(repo.path, "brainseg-fp16"))
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert trt.parameters["trt_profile_opt_shapes"] == "image:8x64x64x3" == trt.parameters["trt_profile_max_shapes"]
    assert list(config(repo.path, "brainseg-fp16").dynamic_batching.preferred_batch_size) == [8]


def test_fixed_batch_graph_gets_max_batch_size_zero_and_full_dims(artifacts_copy, tmp_path):
    import onnx

    path = artifacts_copy / "ensemble.fp32.onnx"
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1  # the batch axis, symbolic in the export
    replace(path, model.SerializeToString())
    edit_manifest(artifacts_copy, lambda raw: raw["files"][path.name].update(sha256=sha256_file(path)))

    repo = export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=("fp32",)))
    cfg = config(repo.path, "brainseg-fp32")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    check_tensors(cfg, raw_manifest(artifacts_copy), batch_in_dims=1)
    (image,) = cfg.input
    got = run(ort_session(repo.path / "brainseg-fp32" / "1" / "model.onnx"),
              {image.name: np.zeros(tuple(image.dims), np.uint8)})
    assert got["mask"].shape == tuple(cfg.output[1].dims)


# --- TensorRT plans -----------------------------------------------------------------------------


def fake_engine(folder, **provenance_changes):
    """An int8 engine file beside the int8 GPU graph, with a provenance record as the build writes it, as changed."""
    manifest = Manifest.load(folder)
    engine = manifest.engine_path("int8")
    engine.write_bytes(b"fake engine")
    standins.write_provenance(engine, manifest.path_for("int8", "gpu"), **{"precision": "int8", **provenance_changes})
    return engine


def test_provenance_matched_engine_becomes_a_tensorrt_plan_model(artifacts_copy, tmp_path):
    engine = fake_engine(artifacts_copy)
    repo = export_triton(artifacts_copy, tmp_path / "repo")
    assert [m.name for m in repo.models] == ["brainseg-fp32", "brainseg-int8", "brainseg-int8-trt"]
    assert repo.notes == []
    cfg = config(repo.path, "brainseg-int8-trt")
    assert (cfg.platform, cfg.backend) == ("tensorrt_plan", "tensorrt")
    assert cfg.max_batch_size == 4  # the stand-in provenance's profile is (1, 2, 4)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    check_tensors(cfg, raw_manifest(artifacts_copy))
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    plan = repo.path / "brainseg-int8-trt" / "1" / "model.plan"
    assert plan.read_bytes() == b"fake engine" and sha256_file(plan) == sha256_file(engine)
    assert "runs only under TensorRT 10.3.0 on Fake GPU (compute capability 8.7)" in (repo.path / README).read_text()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"onnx_sha256": "cd" * 32}, "compiled from ONNX sha256 cdcdcdcdcdcd"),
        ({"precision": "fp16"}, "compiled at precision fp16, not int8"),
        ({"strongly_typed": False}, "weakly typed"),
        ({"profile": (2, 4, 8)}, "profile starts at batch 2"),
        (None, "no provenance file ensemble.int8.engine.provenance.json"),
        ("{}", "lacks"),
    ],
)
def test_engine_without_matching_provenance_is_not_served(artifacts_copy, tmp_path, change, reason):
    engine = fake_engine(artifacts_copy, **(change if isinstance(change, dict) else {}))
    if change is None:
        provenance_file(engine).unlink()
    elif isinstance(change, str):
        provenance_file(engine).write_text(change)
    repo = export_triton(artifacts_copy, tmp_path / "repo")
    assert not (repo.path / "brainseg-int8-trt").exists()
    assert [m.name for m in repo.models] == ["brainseg-fp32", "brainseg-int8"]
    (note,) = repo.notes
    assert note.startswith("ensemble.int8.engine not served") and reason in note
    assert note in (repo.path / README).read_text()


def test_cpu_repository_writes_no_plan_even_for_a_matching_engine(artifacts_copy, tmp_path):
    fake_engine(artifacts_copy)
    repo = export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(kind="cpu"))
    assert [m.runtime for m in repo.models] == ["onnxruntime", "onnxruntime"]


# --- errors ---------------------------------------------------------------------------------------


def test_missing_artifacts_folder(tmp_path):
    with pytest.raises(ArtifactError, match=f"{tmp_path / 'nowhere'}: artifacts folder not found"):
        export_triton(tmp_path / "nowhere", tmp_path / "repo")


def test_manifest_that_fails_verification_names_the_file(artifacts_copy, tmp_path):
    path = artifacts_copy / "ensemble.int8.onnx"
    replace(path, path.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"ensemble\.int8\.onnx: sha256 differs from the manifest"):
        export_triton(artifacts_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_precision_not_exported_or_not_passed(artifacts_copy, tmp_path):
    with pytest.raises(ArtifactError, match="precision fp16 was not exported; this folder has fp32, int8"):
        export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=("fp16",)))
    with pytest.raises(ConfigError, match="--precision names no precision; usable: fp32, int8"):
        export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=()))
    with pytest.raises(ConfigError, match="'bf16' is not one of: fp32, fp16, int8"):
        export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=("bf16",)))
    edit_manifest(artifacts_copy, lambda raw: raw["precisions"]["int8"].update(passed=False))
    with pytest.raises(ConfigError, match="precision int8 failed the accuracy gate; usable: fp32"):
        export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(precisions=("int8",)))
    repo = export_triton(artifacts_copy, tmp_path / "repo")
    assert [m.precision for m in repo.models] == ["fp32"]


def test_non_empty_destination_needs_overwrite_and_overwrite_replaces_only_its_own(tiny_artifacts, tmp_path):
    out = tmp_path / "repo"
    export_triton(tiny_artifacts, out, TritonOptions(precisions=("fp32", "int8")))
    (out / "stale").write_text("from before")
    options = TritonOptions(precisions=("fp32",))
    with pytest.raises(ConfigError, match=f"{out} is not empty; pass --overwrite"):
        export_triton(tiny_artifacts, out, options)
    export_triton(tiny_artifacts, out, TritonOptions(precisions=("fp32",), overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted([README, RECORD, "brainseg-fp32"])
    assert not list(tmp_path.glob(".repo.*"))  # no staging or old folder left behind


def test_overwrite_refuses_a_folder_it_did_not_write(tiny_artifacts, tmp_path):
    shared = tmp_path / "models"  # say, a Triton repository holding another team's model
    (shared / "their-model" / "1").mkdir(parents=True)
    (shared / "their-model" / "config.pbtxt").write_text('name: "their-model"')
    with pytest.raises(ConfigError, match="did not write \\(no brainseg-triton.json\\)"):
        export_triton(tiny_artifacts, shared, TritonOptions(precisions=("fp32",), overwrite=True))
    assert (shared / "their-model" / "config.pbtxt").read_text() == 'name: "their-model"'
    assert sorted(p.name for p in shared.iterdir()) == ["their-model"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_add_writes_models_beside_others_and_replaces_only_its_own(tiny_artifacts, tmp_path):
    shared = tmp_path / "models"  # a Triton repository holding another team's model and files
    (shared / "their-model" / "1").mkdir(parents=True)
    (shared / "their-model" / "config.pbtxt").write_text('name: "their-model"')
    (shared / "their-model" / "1" / "model.onnx").write_bytes(b"theirs")
    (shared / "README.md").write_text("the team's notes")
    theirs = _tree(shared)
    repo = export_triton(tiny_artifacts, shared, TritonOptions(precisions=("fp32",), add=True))
    assert [m.name for m in repo.models] == ["brainseg-fp32"]
    assert {k: v for k, v in _tree(shared).items() if k in theirs} == theirs  # not one byte of theirs changed
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        ["their-model", "README.md", "brainseg-fp32", "brainseg.README.md", "brainseg.brainseg-triton.json"])
    assert (shared / "brainseg-fp32" / triton.MODEL_MARKER).is_file()
    config = parse_pbtxt((shared / "brainseg-fp32" / "config.pbtxt").read_text())
    assert config.name == "brainseg-fp32"

    # a second export with another name goes beside both; the same name needs --overwrite
    export_triton(tiny_artifacts, shared, TritonOptions(precisions=("int8",), name="candidate", add=True))
    assert (shared / "candidate-int8" / "1" / "model.onnx").is_file() and (shared / "brainseg-fp32").is_dir()
    before = _tree(shared)
    with pytest.raises(ConfigError, match="brainseg-fp32 exists; pass --overwrite"):
        export_triton(tiny_artifacts, shared, TritonOptions(precisions=("fp32",), add=True))
    assert _tree(shared) == before
    export_triton(tiny_artifacts, shared, TritonOptions(precisions=("fp32",), add=True, overwrite=True))
    after, record = _tree(shared), "brainseg.brainseg-triton.json"
    assert json.loads(after.pop(record))["options"]["overwrite"] and before.pop(record)
    assert after == before  # the rest replaced by the same export: the same bytes
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folder left


def test_add_never_replaces_a_model_it_did_not_write(tiny_artifacts, tmp_path):
    shared = tmp_path / "models"
    (shared / "brainseg-fp32" / "1").mkdir(parents=True)  # another team's model that happens to share the name
    (shared / "brainseg-fp32" / "config.pbtxt").write_text('name: "brainseg-fp32"')
    before = _tree(shared)
    with pytest.raises(ConfigError, match=r"did not write it \(no brainseg-model.json\); choose another --name"):
        export_triton(tiny_artifacts, shared, TritonOptions(precisions=("fp32",), add=True, overwrite=True))
    assert _tree(shared) == before and sorted(p.name for p in shared.iterdir()) == ["brainseg-fp32"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ConfigError, match="no such folder; --add writes models into an existing"):
        export_triton(tiny_artifacts, tmp_path / "absent", TritonOptions(add=True))


def test_destination_holding_the_artifacts_is_refused(artifacts_copy):
    with pytest.raises(ConfigError, match="holds the artifacts folder it reads"):
        export_triton(artifacts_copy, artifacts_copy.parent, TritonOptions(overwrite=True))
    assert (artifacts_copy / MANIFEST).is_file()


def test_bad_options_are_refused_before_reading_anything(tmp_path):
    for options, message in [
        (TritonOptions(kind="tpu"), "--kind 'tpu' is not one of: gpu, cpu"),
        (TritonOptions(instances=0), "--instances and --max-batch must be >= 1"),
        (TritonOptions(name="my model"), "not a usable model name"),
        (TritonOptions(max_batch=8, preferred_batch=(4, 16)), r"--preferred-batch \[4, 16\] must lie within 1..--max"),
    ]:
        with pytest.raises(ConfigError, match=message):
            export_triton(tmp_path / "nowhere", tmp_path / "repo", options)


def test_preferred_batch_above_an_engines_profile_is_refused(artifacts_copy, tmp_path):
    fake_engine(artifacts_copy)  # profile (1, 2, 4)
    with pytest.raises(ConfigError, match=r"brainseg-int8-trt: --preferred-batch \[8\] exceeds its max_batch_size 4"):
        export_triton(artifacts_copy, tmp_path / "repo", TritonOptions(preferred_batch=(8,)))
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".repo.*"))


def test_missing_triton_extra_names_it(tiny_artifacts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)  # import now raises ImportError
    with pytest.raises(BrainsegError, match=r"tritonclient is not installed; .*pip install 'brainseg\[triton\]'"):
        export_triton(tiny_artifacts, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_failure_midway_leaves_no_repository(tiny_artifacts, tmp_path, monkeypatch):
    real = triton.to_pbtxt

    def fail_on_int8(cfg, header=()):
        if cfg["name"].endswith("int8"):
            raise ArtifactError("injected")
        return real(cfg, header)

    monkeypatch.setattr(triton, "to_pbtxt", fail_on_int8)
    with pytest.raises(ArtifactError, match="injected"):
        export_triton(tiny_artifacts, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


# --- the command ----------------------------------------------------------------------------------


def test_command_writes_and_reports(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "repo"
    code = triton_main([str(tiny_artifacts), "--out", str(out), "--precision", "int8", "--instances", "2",
                        "--preferred-batch", "4,8", "--max-batch", "8"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "brainseg-int8" in printed and f"tritonserver --model-repository {out.resolve()}" in printed
    cfg = config(out, "brainseg-int8")
    assert cfg.instance_group[0].count == 2 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]


def test_command_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert triton_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nowhere'}: artifacts folder not found"
    assert triton_main([str(tmp_path), "--out", str(tmp_path / "repo"), "--preferred-batch", "8,x"]) == 1
    assert "--preferred-batch must be comma-separated integers" in capsys.readouterr().err
    assert triton_main([]) == 2  # typer's usage error: no ARTIFACTS


def test_command_defaults_are_the_library_defaults():
    parameters, defaults = inspect.signature(triton_command).parameters, TritonOptions()
    for option in ("kind", "instances", "max_batch", "max_queue_delay_us", "name", "hardlink", "overwrite",
                   "add"):
        assert parameters[option].default == getattr(defaults, option), option


def test_command_runs_without_torch(tiny_artifacts, tmp_path):
    out = tmp_path / "repo"
    script = ("import sys; sys.modules['torch'] = None\n"
              "from brainseg.deploy.triton_cli import triton_main\n"
              f"sys.exit(triton_main([{str(tiny_artifacts)!r}, '--out', {str(out)!r}, '--precision', 'fp32']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert (out / "brainseg-fp32" / "1" / "model.onnx").is_file()
