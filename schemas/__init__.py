"""The wire contracts shared by training, serving and the report (pydantic v2 models).

Installed as ``labelaudit.schemas``. Nothing here imports torch, onnx or the serving code.
"""
