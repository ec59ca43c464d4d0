"""ONNX export that keeps binary layers recognisable.

torch's exporter optimises by default, and its optimiser folds BatchNormalization into the
preceding Conv: that scales ±1 weights into arbitrary floats and destroys the binary layer. We
export unoptimised and then only fold constants (the binarized weights become ±1 initializers)
and drop unused nodes. Binarizers export as ``Where(GreaterOrEqual(x, 0), 1, -1)``, which states
``x >= 0 -> +1`` exactly (ONNX ``Sign`` would give 0 at 0). The batch dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from typing import TYPE_CHECKING

from ..atomic_files import atomic_write
from ..errors import BnnError
from ..cache import cache_dir

if TYPE_CHECKING:
    import onnx
    from torch import nn

# torch and onnx are imported where an export needs them: every command that names a model
# imports this module (``MODEL_HELP``, ``resolve_model``), and torch alone costs seconds of
# start-up that compiling an ONNX file does not need.

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str, verbose: bool = False) -> None:
    import onnx
    import onnxscript.optimizer
    import torch

    model = model.eval()
    example = (torch.zeros((2,) + tuple(input_shape)),)
    batch = torch.export.Dim("batch", min=1)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        program = torch.onnx.export(
            model,
            example,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            optimize=False,
            verbose=False,
        )
    # The default size limit (8192 elements) would leave large binarized weights unfolded.
    onnxscript.optimizer.fold_constants(program.model, input_size_limit=1 << 26, output_size_limit=1 << 26)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    proto = strip_metadata(program.model_proto)
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the exporter's metadata and doc strings (in place): torch's exporter
    records, per node, stack traces with the exporting machine's absolute file paths and its
    FX graph, which a file the project writes or ships must not carry. Names, values and
    attributes, all that the model computes, stay as they are."""
    def strip(proto) -> None:
        for name in ("metadata_props", "doc_string"):
            if proto.DESCRIPTOR.fields_by_name.get(name) is not None:
                proto.ClearField(name)

    def strip_graph(graph: onnx.GraphProto) -> None:
        strip(graph)
        for item in [*graph.input, *graph.output, *graph.value_info, *graph.initializer, *graph.sparse_initializer]:
            strip(item)
        for node in graph.node:
            strip(node)
            for attribute in node.attribute:
                strip(attribute)
                # only graphs that are there: touching attribute.g would create an empty one
                for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                    strip_graph(subgraph)

    strip(model)
    strip_graph(model.graph)
    for function in model.functions:
        strip(function)
        for node in function.node:
            strip(node)
    return model


# the bundled model: package data of bnn_tvm itself (bnn_tvm/data/)
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def default_model_path() -> str:
    return os.path.join(DATA_DIR, "digits.onnx")


def default_checkpoint_path() -> str:
    return os.path.join(DATA_DIR, "digits.pt")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MODEL_HELP = ("an ONNX file, a checkpoint from `train` (.pt) or a zoo name such as birealnet18 (random weights); "
              "default: the bundled digits model")


def is_checkpoint(path: str) -> bool:
    """A checkpoint written by ``train`` (by its suffix); any other file is read as ONNX."""
    return path.endswith(CHECKPOINT_SUFFIXES)


def not_a_model(model: str) -> Exception:
    from ..training import models

    return BnnError(f"{model!r} is neither a file nor a zoo model; give an ONNX file, a checkpoint "
                    f"({'/'.join(CHECKPOINT_SUFFIXES)}) or one of: {', '.join(sorted(models.ZOO))}")


def resolve_model(model: str | None, cache: str | None = None) -> str:
    """An ONNX path for ``model``, which every command that reads a model accepts:

    * None: the bundled default;
    * an ONNX file: itself;
    * a checkpoint written by ``train``: exported once, under a name that holds its contents'
      hash, so a retrained checkpoint is exported again;
    * a zoo name: exported once with its random initial weights, seeded (latency and exactness
      checks do not depend on the values).

    Exports go into ``cache``, default the board cache's ``models`` folder.
    """
    if model is None:
        return default_model_path()

    folder = cache or os.path.join(cache_dir(), "models")
    if os.path.isfile(model):
        return _exported_checkpoint(model, folder) if is_checkpoint(model) else model
    from ..training import models

    if model not in models.ZOO:
        raise not_a_model(model)
    path = os.path.join(folder, f"{model}.onnx")
    if not os.path.isfile(path):
        import torch

        torch.manual_seed(0)
        export_onnx(models.build(model).eval(), models.input_shape(model), path)
    return path


def _exported_checkpoint(checkpoint: str, folder: str) -> str:
    from ..training import models
    from ..training.train import load_checkpoint

    with open(checkpoint, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    path = os.path.join(folder, f"{stem}-{digest}.onnx")
    if not os.path.isfile(path):
        module, saved = load_checkpoint(checkpoint)
        export_onnx(module, models.input_shape(saved["model"]), path)
    return path
