"""Test, benchmark and demo tooling that contributors never install.

`pip install .` packages `federation*` only (pyproject.toml), so nothing here reaches a contributor's machine, and no
module of `federation` imports it (tests/federation/test_packaging.py checks both). It is importable from a checkout:
the repository root is on sys.path for pytest (pyproject's `pythonpath`), manage.py, the bench scripts and every
Flower process started through `federation.procs.flower_env`.

- `tiny`: a tiny random Llama (and its GGUF), built in seconds with no download.
- `attack`: what a broken or malicious node might send, as a transform of an honest update.
- `hostile_node` (with `hostile_runtime`): a real SuperNode that sends such updates, for tests and benchmarks of the
  server's defences.
"""
