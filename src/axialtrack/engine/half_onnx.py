"""A half-precision copy of an fp32 ONNX model for strongly typed GPU builders.

TensorRT 10 deprecates and TensorRT 11 removes the "allow FP16" builder flag: the
precision of a network comes from the types in its ONNX. :func:`to_half_onnx`
writes an ONNX whose convolutional trunk and heads run in fp16 while the inputs,
the outputs and the input normalization (raw counts up to 65535 and their sums,
beyond the fp16 range) stay fp32.

The fp16 region is every node downstream of the first convolution (including
it). Float initializers it reads are stored as fp16; float tensors entering it
from the fp32 part get a ``Cast``; graph outputs produced in it are cast back to
fp32 under their original names.
"""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path

import numpy as np

__all__ = ["to_half_onnx"]


def to_half_onnx(src: str | Path, dst: str | Path) -> Path:
    """Write a mixed fp16/fp32 copy of the ONNX model ``src`` to ``dst``.

    Parameters
    ----------
    src
        fp32 ONNX model (the bundle's ``model.onnx``).
    dst
        Output path.

    Returns
    -------
    pathlib.Path
        ``dst``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for t in inits.values():
        types[t.name] = t.data_type
    consumers: dict[str, list[int]] = defaultdict(list)
    producer: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            if name:
                consumers[name].append(i)
        for name in node.output:
            producer[name] = i
            if node.op_type == "Constant" and name not in types:
                for a in node.attribute:
                    if a.name == "value":
                        types[name] = a.t.data_type

    half: set[int] = set()
    queue = deque(i for i, n in enumerate(g.node) if n.op_type == "Conv")
    if not queue:
        raise ValueError(f"{src}: no Conv node; nothing to convert")
    while queue:
        i = queue.popleft()
        if i in half:
            continue
        half.add(i)
        for name in g.node[i].output:
            queue.extend(consumers.get(name, ()))

    half_inits: dict[str, str] = {}
    casts: dict[str, str] = {}
    new_nodes = []
    for i, node in enumerate(g.node):
        if i in half:
            for k, name in enumerate(node.input):
                if not name or types.get(name) != f32:
                    continue
                if name in inits:
                    if name not in half_inits:
                        arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                        t = numpy_helper.from_array(arr, name=f"{name}__fp16")
                        g.initializer.append(t)
                        half_inits[name] = t.name
                    node.input[k] = half_inits[name]
                elif producer.get(name) in half:
                    continue
                else:
                    if name not in casts:
                        casts[name] = f"{name}__fp16"
                        new_nodes.append(
                            helper.make_node(
                                "Cast",
                                [name],
                                [casts[name]],
                                to=f16,
                                name=f"{name}__cast_fp16",
                            )
                        )
                    node.input[k] = casts[name]
            if node.op_type == "Cast":
                for a in node.attribute:
                    if a.name == "to" and a.i == f32:
                        a.i = f16
        new_nodes.append(node)

    outputs = {o.name for o in g.output}
    for o in list(outputs):
        if producer.get(o) in half and types.get(o, f32) == f32:
            node = g.node[producer[o]]
            internal = f"{o}__fp16"
            node.output[list(node.output).index(o)] = internal
            new_nodes.append(
                helper.make_node(
                    "Cast", [internal], [o], to=f32, name=f"{o}__cast_fp32"
                )
            )
    # drop fp32 initializers no longer read
    used = {name for n in new_nodes for name in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    onnx.checker.check_model(model)
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst
