"""Take the background percentile out of a bundle's ONNX graph for onnxruntime.

:class:`~axialtrack.model.network.PairNormalization` finds each pair's background
as the k-th smallest pixel with ``TopK``. onnxruntime's CPU ``TopK`` costs about a
quarter of the whole model; ``numpy.partition`` finds the same value about ten
times faster. :func:`split_background` rewrites the graph so that this value is
an input (``background``, ``(batch, 1)``) and :func:`kth_smallest` computes it.
The result is the same element of the same float32 values, so the outputs are
unchanged; the engine still checks them against the original graph on a probe
batch before using the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BACKGROUND_INPUT", "SplitGraph", "kth_smallest", "split_background"]

#: Name of the new graph input.
BACKGROUND_INPUT = "background"


@dataclass(frozen=True)
class SplitGraph:
    """A rewritten model and how to feed its ``background`` input.

    Attributes
    ----------
    model_bytes
        The serialized ONNX model with the ``background`` input.
    k
        The background is the ``k``-th smallest (1-based) pixel ...
    channels
        ... of the first ``channels`` planes of each pair.
    """

    model_bytes: bytes
    k: int
    channels: int


def kth_smallest(image: np.ndarray, k: int, channels: int) -> np.ndarray:
    """``(B, 1)`` float32: the ``k``-th smallest pixel of each pair's planes."""
    if image.shape[0] == 0:
        return np.zeros((0, 1), np.float32)
    flat = np.ascontiguousarray(image[:, :channels], dtype=np.float32).reshape(
        image.shape[0], -1
    )
    return np.partition(flat, k - 1, axis=1)[:, k - 1 : k]


def _const_value(graph: object, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:  # type: ignore[attr-defined]
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:  # type: ignore[attr-defined]
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def split_background(model_bytes: bytes, channels: int) -> SplitGraph | None:
    """The graph with the background ``TopK`` replaced by an input, or None.

    Returns None when the graph does not have the expected pattern (one
    ``TopK(largest=0)`` over the flattened planes whose values feed one
    ``Slice`` taking the last of them), so any other model runs unchanged.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(model_bytes)
    g = model.graph
    topk = [n for n in g.node if n.op_type == "TopK"]
    if len(topk) != 1:
        return None
    tk = topk[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in tk.attribute}
    if attrs.get("largest", 1) != 0 or attrs.get("axis", -1) not in (1, -1):
        return None
    kv = _const_value(g, tk.input[1])
    if kv is None or kv.size != 1:
        return None
    k = int(kv.reshape(-1)[0])
    # the values output must feed exactly one Slice that keeps the last column
    users = [n for n in g.node if tk.output[0] in n.input]
    if len(users) != 1 or users[0].op_type != "Slice":
        return None
    sl = users[0]
    starts = _const_value(g, sl.input[1])
    ends = _const_value(g, sl.input[2])
    if starts is None or ends is None:
        return None
    if int(starts.reshape(-1)[0]) not in (-1, k - 1) or int(ends.reshape(-1)[0]) < k:
        return None
    if any(tk.output[1] in n.input for n in g.node):
        return None  # the indices are used: not the normalization pattern
    bg_name = sl.output[0]
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == bg_name:
                n.input[i] = BACKGROUND_INPUT
    drop = {id(tk), id(sl)}
    kept = [n for n in g.node if id(n) not in drop]
    # remove what only fed the dropped nodes (their constants)
    while True:
        used = {i for n in kept for i in n.input} | {o.name for o in g.output}
        dead = [n for n in kept if not any(o in used for o in n.output)]
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        kept = [n for n in kept if id(n) not in dead_ids]
    del g.node[:]
    g.node.extend(kept)
    batch = g.input[0].type.tensor_type.shape.dim[0]
    dim0: str | int = batch.dim_param or batch.dim_value or "batch"
    g.input.append(
        helper.make_tensor_value_info(BACKGROUND_INPUT, TensorProto.FLOAT, [dim0, 1])
    )
    onnx.checker.check_model(model)
    return SplitGraph(model.SerializeToString(), k, int(channels))
