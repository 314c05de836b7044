"""Layer 1: models in and out: ONNX import (:mod:`.onnx_import`) and export
(:mod:`.export_onnx`), the built-in model zoo (:mod:`.zoo`), data sets (:mod:`.datasets`) and the
onnxruntime reference every result is checked against (:mod:`.reference`)."""
