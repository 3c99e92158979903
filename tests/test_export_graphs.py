"""Exported graphs against PyTorch through ONNX Runtime on the CPU, on tiny models at 64x64.

Tolerances: fp32 probability within 1e-4 of PyTorch (max abs); fp16 within 1e-2 of the fp32
graph (ONNX Runtime's CPU provider computes fp16 convolutions in float32 with fp16-rounded
weights, see brainseg.export.precision); INT8 is checked for structure, not closeness, because
random weights give meaningless activation ranges.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="needs the export extra (onnx)")
pytest.importorskip("onnxruntime", reason="needs the export extra (onnxruntime)")

import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS, INPUT_NAME, MEMBER_OUTPUTS  # noqa: E402
from brainseg.artifacts.sessions import ort_session, run  # noqa: E402
from brainseg.data.preprocess import Normalisation  # noqa: E402
from brainseg.deploy.tensorrt_checks import check_qdq_for_tensorrt  # noqa: E402
from brainseg.errors import ConfigError  # noqa: E402
from brainseg.export.graphs import EnsembleGraph, MemberGraph, example_input  # noqa: E402
from brainseg.export.onnx_io import export_onnx, op_types, simplify  # noqa: E402
from brainseg.export.precision import (  # noqa: E402
    boundary_nodes,
    export_fp16,
    precision_summary,
    quantize_int8,
)
from brainseg.train.models.registry import build_model  # noqa: E402

TINY = {"unet": {"base_channels": 8, "depth": 3}, "fpn": {"encoder": "resnet18"}, "resunet": {"encoder": "resnet18"}}
NAMES = ("unet", "fpn", "resunet")
SIZE = 64
NORM = Normalisation("uint8", (0.20, 0.25, 0.30), (0.15, 0.20, 0.25), scheme="fixed")
WEIGHTS = (1.0, 2.0, 1.0)
FP32_TOL = 1e-4
FP16_TOL = 1e-2


def _members():
    torch.manual_seed(0)
    return [build_model(name, in_channels=3, classes=1, options=TINY[name]).eval() for name in NAMES]


def _by_hand(x, norm):
    return (x - torch.tensor(norm.mean).view(1, -1, 1, 1)) / torch.tensor(norm.std).view(1, -1, 1, 1)


def _images(batch, seed=1):
    return example_input(batch=batch, size=SIZE, channels=3, input_dtype="uint8", seed=seed)


@pytest.fixture(scope="module")
def members():
    return _members()


@pytest.fixture(scope="module")
def ensemble(members):
    return EnsembleGraph(members, weights=WEIGHTS, norm=NORM, input_dtype="uint8", threshold=0.5)


@pytest.fixture(scope="module")
def ensemble_onnx(ensemble, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "ensemble.fp32.onnx"
    return export_onnx(
        ensemble, path, example=_images(1), input_names=[INPUT_NAME], output_names=list(ENSEMBLE_OUTPUTS)
    )


def _torch_outputs(graph, images):
    with torch.no_grad():
        return [out.numpy() for out in graph(images)]


def _manual_member_probabilities(members, images):
    """Each member's sigmoid, on input normalised by hand: x / 255, then (x - mean) / std per channel."""
    x = _by_hand(images.permute(0, 3, 1, 2).float() / 255.0, NORM)  # (B, C, H, W)
    with torch.no_grad():
        return np.stack([torch.sigmoid(member(x)).numpy() for member in members])  # (M, B, K, H, W)


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_member_graph_matches_torch(members, index, tmp_path):
    graph = MemberGraph(members[index], norm=NORM, input_dtype="uint8", threshold=0.4)
    path = export_onnx(
        graph, tmp_path / "m.onnx", example=_images(1), input_names=[INPUT_NAME], output_names=list(MEMBER_OUTPUTS)
    )
    images = _images(2, seed=3)
    out = run(ort_session(path, threads=2), {INPUT_NAME: images.numpy()})
    probability, _ = _torch_outputs(graph, images)
    assert out["probability"].shape == (2, 1, SIZE, SIZE) and out["probability"].dtype == np.float32
    np.testing.assert_allclose(out["probability"], probability, rtol=0, atol=FP32_TOL)
    assert out["mask"].dtype == np.uint8
    np.testing.assert_array_equal(out["mask"], (out["probability"] >= 0.4).astype(np.uint8))
    assert "Pad" not in op_types(path)


def test_float32_input_graph_normalises_without_scaling(members, tmp_path):
    norm = Normalisation("float", (0.5, -0.5, 0.0), (2.0, 1.0, 0.5))
    graph = MemberGraph(members[0], norm=norm, input_dtype="float32")
    images = example_input(batch=2, size=SIZE, channels=3, input_dtype="float32", seed=4)
    path = export_onnx(graph, tmp_path / "f.onnx", example=images, input_names=["image"], output_names=["p", "m"])
    out = run(ort_session(path), {"image": images.numpy()})
    x = _by_hand(images.permute(0, 3, 1, 2), norm)
    with torch.no_grad():
        expected = torch.sigmoid(members[0](x)).numpy()
    np.testing.assert_allclose(out["p"], expected, rtol=0, atol=FP32_TOL)


@pytest.mark.parametrize("batch", [1, 3])
def test_ensemble_graph_matches_torch_and_its_members(ensemble, ensemble_onnx, members, batch):
    images = _images(batch, seed=10 + batch)
    out = run(ort_session(ensemble_onnx, threads=2), {INPUT_NAME: images.numpy()})
    probability, mask, disagreement = _torch_outputs(ensemble, images)
    np.testing.assert_allclose(out["probability"], probability, rtol=0, atol=FP32_TOL)
    np.testing.assert_allclose(out["disagreement"], disagreement, rtol=0, atol=FP32_TOL)

    per_member = _manual_member_probabilities(members, images)  # (M, B, 1, H, W)
    weights = np.array(WEIGHTS, dtype=np.float32) / sum(WEIGHTS)
    expected = np.tensordot(weights, per_member, axes=1)  # (B, 1, H, W)
    np.testing.assert_allclose(out["probability"], expected, rtol=0, atol=FP32_TOL)
    np.testing.assert_allclose(out["disagreement"], per_member.max(0) - per_member.min(0), rtol=0, atol=FP32_TOL)
    assert out["mask"].dtype == np.uint8 and out["mask"].shape == (batch, 1, SIZE, SIZE)
    np.testing.assert_array_equal(out["mask"], (out["probability"] >= 0.5).astype(np.uint8))
    assert 0 < out["mask"].mean() < 1, "threshold test is vacuous: the mask is constant"


def test_ensemble_graph_holds_pre_and_post_processing(ensemble_onnx):
    ops = op_types(ensemble_onnx)
    for op in ("Cast", "Div", "Transpose", "Sigmoid", "ReduceMax", "ReduceMin", "GreaterOrEqual"):
        assert ops[op] > 0, f"{op} missing from the graph: {dict(ops)}"
    assert ops["Pad"] == 0
    model = onnx.load(str(ensemble_onnx))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.ir_version <= 10


def test_slice_foreground_graph_ignores_the_scale_of_a_scan(members, tmp_path):
    graph = MemberGraph(members[2], norm=Normalisation("uint8"), input_dtype="uint8")
    assert graph.preprocess.norm.scheme == "slice_foreground"
    images = (_images(2, seed=5) // 2) * 2  # even values: halving them is exact in uint8
    path = export_onnx(graph, tmp_path / "s.onnx", example=_images(1), input_names=["image"], output_names=["p", "m"])
    session = ort_session(path)
    full = run(session, {"image": images.numpy()})["p"]
    half = run(session, {"image": (images // 2).numpy()})["p"]
    np.testing.assert_allclose(half, full, rtol=0, atol=FP32_TOL)
    np.testing.assert_allclose(full, _torch_outputs(graph, images)[0], rtol=0, atol=FP32_TOL)
    fixed = MemberGraph(members[2], norm=NORM, input_dtype="uint8")  # the old scheme: scale-dependent
    assert np.abs(_torch_outputs(fixed, images)[0] - _torch_outputs(fixed, images // 2)[0]).max() > 1e-3


def test_slice_quartiles_graph_matches_torch_in_onnxruntime_and_openvino(members, tmp_path):
    graph = MemberGraph(members[0], norm=Normalisation("uint8", scheme="slice_quartiles"), input_dtype="uint8")
    images = _images(3, seed=6)
    path = export_onnx(graph, tmp_path / "q.onnx", example=_images(1), input_names=["image"], output_names=["p", "m"])
    expected = _torch_outputs(graph, images)[0]
    np.testing.assert_allclose(run(ort_session(path), {"image": images.numpy()})["p"], expected, rtol=0, atol=FP32_TOL)
    assert "TopK" not in op_types(path), "TensorRT's TopK stops at 3840 elements: quantiles are counted instead"
    ov = pytest.importorskip("openvino", reason="needs the openvino extra")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ours = compiled({"image": images.numpy()})[compiled.output("p")]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


def test_run_says_what_the_graph_expects(ensemble_onnx):
    session = ort_session(ensemble_onnx)
    good = _images(1).numpy()
    with pytest.raises(ValueError, match=r"input 'image': expected uint8 \(batch, 64, 64, 3\), got float32"):
        run(session, {"image": good.astype(np.float32)})
    with pytest.raises(ValueError, match=r"expected uint8 \(batch, 64, 64, 3\), got uint8 \(1, 32, 64, 3\)"):
        run(session, {"image": good[:, :32]})
    with pytest.raises(ValueError, match=r"missing \['image'\], unexpected \['slices'\]"):
        run(session, {"slices": good})


def test_session_threads_sleep_unless_asked_to_spin(ensemble_onnx):
    def spin_setting(session):
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spin_setting(ort_session(ensemble_onnx)) == "0"  # several sessions taking turns
    assert spin_setting(ort_session(ensemble_onnx, spinning=True)) == "1"  # one session back to back


def test_fp16_graph_has_float16_weights_and_float32_io(ensemble, ensemble_onnx, tmp_path):
    path = tmp_path / "ensemble.fp16.onnx"
    summary = export_fp16(
        ensemble, path, example=_images(1), input_names=[INPUT_NAME], output_names=list(ENSEMBLE_OUTPUTS)
    )
    assert summary["weight_dtypes"] == {"float16": sum(summary["weight_dtypes"].values())}
    assert summary["inputs"] == {"image": "uint8"}
    assert summary["outputs"] == {"probability": "float32", "mask": "uint8", "disagreement": "float32"}
    assert next(ensemble.members[0].parameters()).dtype == torch.float32, "export_fp16 changed the fp32 graph"

    images = _images(3, seed=7).numpy()
    fp16 = run(ort_session(path), {INPUT_NAME: images})
    fp32 = run(ort_session(ensemble_onnx), {INPUT_NAME: images})
    difference = np.abs(fp16["probability"] - fp32["probability"]).max()
    assert 0 < difference <= FP16_TOL


def test_fp16_compute_dtype_converts_copies_and_keeps_outputs_float32(members, ensemble):
    half = EnsembleGraph(members, weights=WEIGHTS, norm=NORM, input_dtype="uint8", compute_dtype=torch.float16)
    assert next(members[0].parameters()).dtype == torch.float32, "the caller's models were converted"
    assert {p.dtype for p in half.members.parameters()} == {torch.float16}
    images = _images(2, seed=8)
    probability, mask, disagreement = _torch_outputs(half, images)
    assert probability.dtype == np.float32 and disagreement.dtype == np.float32 and mask.dtype == np.uint8
    assert np.abs(probability - _torch_outputs(ensemble, images)[0]).max() <= FP16_TOL


@pytest.fixture(scope="module")
def calibration():
    return [{INPUT_NAME: _images(2, seed=20 + i).numpy()} for i in range(3)]


def _weight_sources(model):
    """For every Conv: the DequantizeLinear that feeds its weight (None if the weight is float) and the weight."""
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sources = {}
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producer.get(node.input[1])
        if dq is None:
            sources[node.name] = (None, initializers[node.input[1]])
            continue
        assert dq.op_type == "DequantizeLinear", f"{node.name}: weight comes from {dq.op_type}"
        quantize = producer.get(dq.input[0])  # a QuantizeLinear where the float weight keeps a Q/DQ pair
        sources[node.name] = (dq, initializers[quantize.input[0] if quantize is not None else dq.input[0]])
    return sources, initializers


def _activation_zero_points(model, initializers):
    """Zero points of the QuantizeLinear nodes that quantize activations (not weights)."""
    return [
        initializers[node.input[2]]
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    ]


@pytest.mark.parametrize("activation_type", ["int8_symmetric", "uint8"])
def test_int8_graph_has_per_channel_symmetric_weights(ensemble_onnx, calibration, activation_type, tmp_path):
    path = tmp_path / f"ensemble.int8.{activation_type}.onnx"
    summary = quantize_int8(ensemble_onnx, path, calibration=calibration, activation_type=activation_type)
    assert summary["calibration_batches"] == 3
    assert summary["quantize_linear"] > 0 and summary["dequantize_linear"] > 0

    model = onnx.load(str(path))
    sources, initializers = _weight_sources(model)
    heads = set(boundary_nodes(ensemble_onnx)["last"])
    assert {name for name, (dq, _) in sources.items() if dq is None} == heads, "only the heads stay float"
    assert summary["quantized_op_types"]["Conv"] == len(sources) - len(heads)
    assert precision_summary(path)["weight_dtypes"]["float32"] == len(heads)
    for name, (dq, weight) in sources.items():
        if dq is None:
            continue
        scale, zero_point = initializers[dq.input[1]], initializers[dq.input[2]]
        assert scale.shape == (weight.shape[0],), f"{name}: scale is not per output channel"
        assert zero_point.dtype == np.int8 and not zero_point.any(), f"{name}: weights are not symmetric int8"

    zero_points = _activation_zero_points(model, initializers)
    assert zero_points
    if activation_type == "int8_symmetric":
        assert all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
        assert check_qdq_for_tensorrt(path) == []
    else:
        assert all(zp.dtype == np.uint8 for zp in zero_points)
    out = run(ort_session(path), {INPUT_NAME: _images(2, seed=9).numpy()})
    assert out["mask"].dtype == np.uint8 and out["probability"].shape == (2, 1, SIZE, SIZE)


def test_int8_keeps_pre_and_post_processing_and_named_nodes_float(ensemble_onnx, calibration, tmp_path):
    stems = boundary_nodes(ensemble_onnx)["first"]
    assert len(stems) == len(NAMES)
    path = tmp_path / "int8.onnx"
    summary = quantize_int8(
        ensemble_onnx, path, calibration=calibration, activation_type="uint8", exclude_nodes=stems[:1]
    )
    model = onnx.load(str(path))
    sources, _ = _weight_sources(model)
    assert stems[0] in summary["excluded_nodes"]
    assert sources[stems[0]][0] is None and sources[stems[1]][0] is not None
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("Sigmoid", "ReduceMax", "ReduceMin", "GreaterOrEqual", "Transpose", "Div"):
            inputs = [producer[name].op_type for name in node.input if name in producer]
            assert "DequantizeLinear" not in inputs, f"{node.name} ({node.op_type}) runs on quantized input"
    with pytest.raises(ConfigError, match="exclude_nodes names no node"):
        quantize_int8(ensemble_onnx, tmp_path / "x.onnx", calibration=calibration, exclude_nodes=["/nope/Conv"])


def test_simplify_removes_nodes_and_keeps_outputs(ensemble_onnx, tmp_path):
    pytest.importorskip("onnxslim", reason="simplify uses onnxslim")
    path = tmp_path / "slim.onnx"
    path.write_bytes(ensemble_onnx.read_bytes())
    report = simplify(path)
    assert report["nodes_after"] < report["nodes_before"]
    images = {INPUT_NAME: _images(2, seed=12).numpy()}
    before, after = run(ort_session(ensemble_onnx), images), run(ort_session(path), images)
    np.testing.assert_allclose(after["probability"], before["probability"], rtol=0, atol=1e-6)


def test_op_types_counts_nodes_inside_subgraphs():
    def branch(op):
        out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        return helper.make_graph([helper.make_node(op, ["x"], ["y"])], op, [], [out])

    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("Relu"), else_branch=branch("Sigmoid"))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    assert op_types(helper.make_model(graph)) == {"If": 1, "Relu": 1, "Sigmoid": 1}


def test_bad_graph_options_are_refused(members):
    with pytest.raises(ConfigError, match="got 2 ensemble weights for 3 models"):
        EnsembleGraph(members, weights=[1, 1], norm=NORM, input_dtype="uint8")
    with pytest.raises(ConfigError, match="must be >= 0 with a positive sum"):
        EnsembleGraph(members, weights=[1, -1, 1], norm=NORM, input_dtype="uint8")
    with pytest.raises(ConfigError, match="uint8 input needs a uint8 normalisation"):
        MemberGraph(members[0], norm=Normalisation("float", (0.0,) * 3, (1.0,) * 3), input_dtype="uint8")
    with pytest.raises(ConfigError, match="input_dtype 'int16' is not supported"):
        MemberGraph(members[0], norm=NORM, input_dtype="int16")
    with pytest.raises(ConfigError, match="activation_type 'int4' is not supported"):
        quantize_int8("unused.onnx", "unused.int8.onnx", calibration=[], activation_type="int4")
