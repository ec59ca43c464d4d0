"""The TensorFlow side of ``tools/larq_vs_lce.py``; runs in a separate venv with Larq and Larq
Compute Engine (``tensorflow-cpu==2.16.2 "tf-keras~=2.16.0" "larq-compute-engine==0.16.*"
"larq==0.14.*" larq-zoo tf2onnx``), never imports bnn_tvm.

    python lce_worker.py export NAME OUTDIR   # NAME.onnx (tf2onnx, NCHW input) and NAME.tflite (LCE)
    python lce_worker.py serve                # JSON lines in: {"tflite", "indirect", "runs"}; out: {"ms"}

Models are built with ``weights=None`` (nothing can be downloaded) and random batch-norm
statistics, so thresholds are not all trivial.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def small_cnn():
    import larq as lq
    import tensorflow as tf

    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False, padding="same", pad_values=1)
    return tf.keras.Sequential([
        tf.keras.layers.Input((32, 32, 3)),
        lq.layers.QuantConv2D(64, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantConv2D(64, 3, **binary),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantConv2D(128, 3, **binary),
        tf.keras.layers.MaxPool2D(2),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantConv2D(128, 3, **binary),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10),
    ])


def zoo(name):
    import larq_zoo as lqz

    shape = (224, 224, 3)
    return {
        "quicknet": lambda: lqz.sota.QuickNet(weights=None, input_shape=shape),
        "birealnet": lambda: lqz.literature.BiRealNet(weights=None, input_shape=shape),
        "binarydensenet28": lambda: lqz.literature.BinaryDenseNet28(weights=None, input_shape=shape),
        "xnornet": lambda: lqz.literature.XNORNet(weights=None, input_shape=shape),
    }[name]()


def build(name):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)  # the same random weights every export
    model = small_cnn() if name == "custom" else zoo(name)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):  # some have no gamma (scale=False)
            layer.set_weights([random_statistic(w.name, w.shape, rng) for w in layer.weights])
    return model


def random_statistic(name: str, shape, rng) -> np.ndarray:
    if "gamma" in name:
        return rng.normal(1, 0.3, shape).astype("float32")
    if "beta" in name:
        return rng.normal(0, 0.3, shape).astype("float32")
    if "moving_mean" in name:
        return rng.normal(0, 1, shape).astype("float32")
    return rng.uniform(0.5, 2, shape).astype("float32")  # moving_variance


def export(name: str, folder: str) -> None:
    import larq_compute_engine as lce
    import tensorflow as tf
    import tf2onnx

    model = build(name)
    spec = (tf.TensorSpec((1,) + tuple(model.input_shape[1:]), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, inputs_as_nchw=["input"],
                               output_path=os.path.join(folder, f"{name}.onnx"))
    with open(os.path.join(folder, f"{name}.tflite"), "wb") as handle:
        handle.write(lce.convert_keras_model(model))


def serve() -> None:
    from larq_compute_engine import testing

    interpreters = {}
    for line in sys.stdin:
        request = json.loads(line)
        key = (request["tflite"], request["indirect"])
        if key not in interpreters:
            with open(request["tflite"], "rb") as handle:
                interpreters[key] = testing.Interpreter(handle.read(), num_threads=1,
                                                        use_indirect_bgemm=request["indirect"])
        interpreter = interpreters[key]
        x = np.random.default_rng(0).standard_normal((1, *interpreter.input_shapes[0][1:])).astype(np.float32)
        interpreter.predict(x)
        times = []
        for _ in range(request["runs"]):
            start = time.perf_counter()
            interpreter.predict(x)
            times.append((time.perf_counter() - start) * 1e3)
        print(json.dumps({"ms": statistics.median(times)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3])
    else:
        serve()
