"""``ssast demo``: the whole pipeline on audio it synthesises itself (``run``), and the synthetic corpora that the
demo, the tests and the benchmarks share (``synthetic``)."""
