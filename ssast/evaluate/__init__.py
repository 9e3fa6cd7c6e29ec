"""Measuring a model: scoring checkpoints (``ssast evaluate``), the frozen-encoder probe, the label-efficiency study,
run comparison, the HEAR API and the FLOP/peak accounting of the benchmarks. Builds on ``train`` and ``serve``;
nothing below imports it."""
