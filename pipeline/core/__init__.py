"""The build kernel: configuration, artifact layout, task declaration with derived dependencies, the step cache,
atomic writes, provenance and external-tool lookup. Nothing here knows about neural networks."""
