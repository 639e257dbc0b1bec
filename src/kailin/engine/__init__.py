"""The engine: the bottom layer of ``kailin run``, knowing no stage.

- :mod:`kailin.engine.stage`: the batch protocol (Arrow table in, Arrow table out, models loaded
  in ``setup()``);
- :mod:`kailin.engine.keys`: content digests and keys;
- :mod:`kailin.engine.lock`: one run per folder;
- :mod:`kailin.engine.run`: the run loop (steps in order, keyed, resumable, with early cutoff);
- :mod:`kailin.engine.executors`: where a record-level step's shards run (local, Ray).

It imports only the base modules (``kailin.errors``, ``kailin.io``); every other package may
import it.
"""

from kailin.engine.stage import Stage

__all__ = ["Stage"]
