"""Triton kernels of rtrick_ops, installed as the subpackage rtrick_ops.kernels."""
