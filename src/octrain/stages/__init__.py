"""The pipeline's stages, in order.

Each stage module has pure functions on records (testable with a fake sampler) and a thin
``run(ctx)`` that reads its inputs from the run directory, writes its outputs there and
returns a small summary dict. ``fingerprint(ctx)`` lists every setting that shapes the
stage's output: when it changes, a finished stage runs again instead of being skipped.

``pairs`` and ``introspect`` can import their output from a user's file instead of making it
(``pairs.source``, ``introspect.source``; see :mod:`octrain.stages.from_file`).
"""
