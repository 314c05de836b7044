import os
import sys

# The test helpers (relax_builders, onnx_builders) sit beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
