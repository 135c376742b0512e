"""The float model: dataset preparation, the network, training, ONNX export and float evaluation helpers."""
