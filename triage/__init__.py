"""triage: pneumothorax triage for chest radiographs."""

import os

__version__ = "0.1.0"

# ONNX Runtime (1.29+, Linux too) otherwise writes a device id and a telemetry database under
# $HOME/.cache/Microsoft and uploads events: nothing may leave --out and the state folder of a hospital
# node.  The opt-out is read once, when onnxruntime is imported, so it is set before any import of it
# (an administrator's explicit value is kept).  triage/backends/onnx.py also disables telemetry events.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
