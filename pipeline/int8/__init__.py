"""The int8 backend with Glow's bundle ABI: graph, profiles, tuning, C code generation and kernels, the host
runner, and the wrapper around Glow's own tools."""
