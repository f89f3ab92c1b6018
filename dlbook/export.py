"""Exporting a model: ``torch.export`` graphs, ONNX files, and running them with ONNX Runtime.

``torch.export.export`` captures a model's forward pass as a graph of ATen operators (an
``ExportedProgram``) with symbolic sizes where asked; ``torch.onnx.export`` (the exporter built on
it, the default since torch 2.9) translates that graph into ONNX, a file format that runtimes
without Python or PyTorch execute. ONNX models travel here as ``bytes`` (a serialized
``onnx.ModelProto``). :func:`onnx_session` opens them with ONNX Runtime after checking that they hold
nothing but weights and standard operators, so a model from elsewhere cannot make the runtime read
other files.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

# Operator domains a model may use: ONNX's own, its ML extension, and ONNX Runtime's contrib operators.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
INPUT_NAME, OUTPUT_NAME = "input", "output"


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence what torch.onnx prints that does not concern the learner, for the ``with`` block only.

    torch 2.13's exporter logs that torchvision is missing (its detection operators are not needed)
    and emits a deprecation warning from inside torch's own pytree code.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            yield
    finally:
        logger.setLevel(level)


def _check_example(model: nn.Module, example: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.ndim < 1:
        raise TypeError(f"expected an example batch: a torch.Tensor (N, ...), got {type(example).__name__}")
    if example.shape[0] < 2:
        # torch.export specialises sizes 0 and 1, so a batch of one cannot become a dynamic axis
        raise ValueError(f"expected an example batch of at least 2 inputs, got shape {tuple(example.shape)}")


def export_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Return ``torch.export.export(model, (example,))``, its first axis symbolic when ``dynamic_batch``.

    Args:
        model: a module whose forward takes one tensor; it is put in eval mode.
        example: a batch (N, ...) with N >= 2 that the forward pass is traced on.
    """
    _check_example(model, example)
    model.eval()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with quiet_exporter():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_onnx(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> bytes:
    """Return the ONNX model (serialized ``ModelProto`` bytes) of ``model`` traced on ``example``.

    ``torch.onnx.export`` with the torch.export-based exporter; input ``"input"``, output ``"output"``;
    the batch axis is named ``"batch"`` and left symbolic when ``dynamic_batch``, else fixed at N.

    Args:
        model: a module whose forward takes one float tensor; it is put in eval mode.
        example: a batch (N, ...) with N >= 2.
    """
    _check_example(model, example)
    model.eval()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with quiet_exporter():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    return program.model_proto.SerializeToString()


def _tensors(graph) -> Iterator:
    """Yield every TensorProto of ``graph``: initializers (sparse ones too), node attributes, subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node) -> Iterator:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for graph in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
            yield from _tensors(graph)


def _check_operators(nodes, own_functions: set, where: str) -> None:
    """Raise ValueError at the first node (subgraphs included) outside STANDARD_DOMAINS and ``own_functions``."""
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in own_functions:
            raise ValueError(f"{where}: operator {node.domain}::{node.op_type} is not a standard ONNX operator")
        for attr in node.attribute:
            for graph in [attr.g, *attr.graphs]:
                _check_operators(graph.node, own_functions, f"{where} (subgraph of {node.op_type})")


def check_onnx_model(model_bytes: bytes):
    """Return the parsed ``onnx.ModelProto`` of ``model_bytes`` after checking it is self-contained.

    Raises TypeError for anything but bytes, ValueError for bytes that are not an ONNX model, that
    refer to external data files, or that use operators outside :data:`STANDARD_DOMAINS` (other than
    functions the model defines itself, whose bodies are checked the same way).
    """
    import onnx
    from google.protobuf.message import DecodeError

    if type(model_bytes) is not bytes:
        raise TypeError(f"expected the ONNX model as bytes, got {type(model_bytes).__name__}")
    try:
        proto = onnx.ModelProto.FromString(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ValueError(f"expected the bytes of an ONNX model, could not parse them ({err})") from None
    if not proto.graph.node:
        raise ValueError("expected an ONNX model with a graph, got one without any node")
    own_functions = {(f.domain, f.name) for f in proto.functions}
    _check_operators(proto.graph.node, own_functions, "graph")
    for function in proto.functions:
        _check_operators(function.node, own_functions, f"function {function.name}")
    tensors = [*_tensors(proto.graph), *(t for f in proto.functions for n in f.node for t in _attribute_tensors(n))]
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors):
        raise ValueError("expected a self-contained ONNX model: this one refers to external data files")
    return proto


def onnx_session(model_bytes: bytes, threads: int = 1):
    """Return an ``onnxruntime.InferenceSession`` on the CPU for the checked ONNX model ``model_bytes``.

    ``threads`` is ONNX Runtime's number of threads inside one operator (intra-op).
    """
    import onnxruntime as ort

    check_onnx_model(model_bytes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def input_shape(session) -> list[int | str | None]:
    """Return the shape of ``session``'s first input: an int per fixed axis, a name (or None) per symbolic one."""
    return list(session.get_inputs()[0].shape)


def run_onnx(session, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Return ``session``'s first output on ``x`` (N, ...) as a float32 numpy array, in batches of ``batch_size``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


@dataclass(frozen=True)
class Comparison:
    """PyTorch against ONNX Runtime on the same inputs."""

    max_abs_diff: float  # largest |torch output - onnx output| over every output entry
    torch_accuracy: float
    onnx_accuracy: float

    @property
    def accuracy_drop(self) -> float:
        return self.torch_accuracy - self.onnx_accuracy


@torch.no_grad()
def compare(model: nn.Module, session, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> Comparison:
    """Return the :class:`Comparison` of ``model`` (on the CPU) and ``session`` on ``x`` (N, ...), labels ``y`` (N,)."""
    if len(x) != len(y):
        raise ValueError(f"expected as many labels as inputs, got {len(y)} labels for {len(x)} inputs")
    model = model.cpu().eval()
    ref = torch.cat([model(x[i:i + batch_size].cpu()) for i in range(0, len(x), batch_size)]).numpy()
    got = run_onnx(session, x, batch_size)
    if got.shape != ref.shape:
        raise ValueError(f"ONNX output of shape {got.shape}, PyTorch's is {ref.shape}")
    labels = y.cpu().numpy()
    return Comparison(float(np.abs(ref - got).max()), float((ref.argmax(1) == labels).mean()),
                      float((got.argmax(1) == labels).mean()))


def quantize_onnx_int8(model_bytes: bytes) -> bytes:
    """Return an int8 copy of the ONNX model ``model_bytes``, quantized by ONNX Runtime's ``quantize_dynamic``.

    Weights of Conv, MatMul and Gemm become int8 (per tensor); activations are quantized on the fly
    at run time (dynamic quantization), as ``dlbook.quantize.quantize_int8`` does in PyTorch. The
    model is pre-processed (shape inference, graph optimisation) first, as ONNX Runtime recommends.

    Weights use 7 of the 8 bits (``reduce_range``): on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8
    kernels add pairs of products in 16 bits, which saturate with full-range weights (its documentation
    says so). Measured on an AVX2-only AMD EPYC, a small CNN: outputs off by 12.5 % of their largest
    value with 8-bit weights, 1.6 % with 7-bit ones.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_onnx_model(model_bytes)
    with tempfile.TemporaryDirectory(prefix="dlbook-onnx-") as tmp:
        fp32, pre, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(model_bytes)
        quant_pre_process(str(fp32), str(pre))
        quantize_dynamic(str(pre), str(int8), weight_type=QuantType.QInt8, reduce_range=True)
        return int8.read_bytes()
