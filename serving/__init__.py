"""Online side of labelaudit: inference, the disagreement policy, the audit store and their transports.

Installed as ``labelaudit.serving``. Must import without torch or onnx.
"""
