#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Writes nn-core/tests/data/default.onnx: the default model's float weights
(weights/default-float.safetensors) as an ONNX graph built by the reference
`onnx` library — layer 0 as Gemm(transB=1) + Relu, layer 1 as MatMul + Add —
so that nn-core's ONNX importer is tested on a file it did not write itself.

    ~/.cache/virtio-nn/venv/bin/pip install onnx==1.23.2
    ~/.cache/virtio-nn/venv/bin/python scripts/train/make_onnx_fixture.py
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

t = load_file("weights/default-float.safetensors")
inits = [
    numpy_helper.from_array(t["0.weight"], "fc1.weight"),
    numpy_helper.from_array(t["0.bias"], "fc1.bias"),
    numpy_helper.from_array(np.ascontiguousarray(t["2.weight"].T), "fc2.weight_t"),
    numpy_helper.from_array(t["2.bias"], "fc2.bias"),
]
nodes = [
    helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
    helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
    helper.make_node("MatMul", ["hr", "fc2.weight_t"], ["m"], name="fc2"),
    helper.make_node("Add", ["m", "fc2.bias"], ["y"], name="fc2_bias"),
]
graph = helper.make_graph(
    nodes,
    "default-16-32-4",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
onnx.checker.check_model(model)
onnx.save(model, "nn-core/tests/data/default.onnx")
