"""Offline side of labelaudit: data recipe, noise-robust training, ONNX and Triton export.

Installed as ``labelaudit.training``. Needs the ``train`` extra (torch, onnx).
"""
