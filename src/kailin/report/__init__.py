"""``kailin report RUN_DIR``: one self-contained HTML page of what a run produced."""
