"""bnn-tvm: binarized PyTorch networks compiled by TVM into exact XNOR-popcount kernels."""

__version__ = "0.1.0"
