"""quantfw-example: a template plugin (a target lowered by the ONNX Runtime backend, a finalize-stage
algorithm and a layer-wise round-stage algorithm)."""
