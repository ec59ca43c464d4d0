"""Benchmarks: the compiled binary model against the float engines a user would otherwise pick.

One run measures every engine with the same thread count and reports the median of repeated
runs (after warm-up):

* ``bnn_tvm``: the model compiled by this project (binary layers as XNOR-popcount kernels);
* ``tvm_fp32``: the same ONNX compiled by TVM with the binarization passes disabled (the float
  twin's arithmetic: binarizers run as float ``Where`` ops, convs as float convs), untuned;
* ``torch_fp32``: PyTorch on the float twin (the same layers with float values), the better of
  NCHW and channels_last memory formats; for a bare ONNX file, which has no PyTorch model behind
  it, the ONNX graph itself run node by node in PyTorch (``bnn_tvm.measure.onnx_torch``, the same float
  arithmetic as ``tvm_fp32``; its output is checked against the reference like TVM's);
* ``ort_fp32``: ONNX Runtime (all graph optimisations) on the same ONNX as ``tvm_fp32``; with a
  board on an aarch64 target (``--rpc``/``--tracker``), ONNX Runtime's aarch64 build on the
  emulated board, timed there and, with ``--count-instructions``, counted by the same plugin over
  one ``session.run`` (the median of 3 such runs: its count varies by up to ~1.6 %;
  ``instruction_ratio`` in the report: each count over ``bnn_tvm``'s);
* ``topi_bitserial`` (single layers only): TVM's own ``topi.nn.bitserial_conv2d_nhwc``,
  unipolar, int32 output, default (untuned, unscheduled) lowering.

A *layer* (``--layer conv3x3:64x56x56``) is a one-conv ONNX model built with ``onnx.helper``:
``Where(x >= 0, 1, -1)`` then a ``Conv`` with ±1 weights and zero padding; its float twin (for
PyTorch) is the conv alone.

The popcount limit: binary multiply-accumulates per second that one core's vector unit can do
when it does nothing but ``XOR + POPCOUNT + ADD`` on data in L1 (``popcount_peak``, measured in
the same run with a kernel of that inner loop and nothing else, times the thread count). The
fraction of it a layer reaches is its binary MACs (``N*OH*OW*OC*C*KH*KW``) per second over
that peak. The same peak bounds every ratio of the run: ``speedup_at_limit`` is each engine's
time over the layer's MACs at the limit, the most any popcount kernel could show against it.
"""
