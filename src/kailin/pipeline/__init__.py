"""The run steps of ``kailin run``: the config that assembles every step's settings and the steps
themselves. The engine that runs them is :mod:`kailin.engine`."""
