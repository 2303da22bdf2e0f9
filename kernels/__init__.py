"""Triton kernels (installed as depth_anything_fast.kernels)."""
