"""Fixtures for tests, benchmarks and smoke tests: synthetic AdaLoRA skills on a tiny random model
(`synthetic`), a tiny served app's artifacts (`serving`, `python -m mdkif.testing.serving DIR`) and
fault injection for the training loop's resume tests (`faults`).

They sit at the top of the package graph (they build skills, routers and a RAG index), so library code
never imports them.
"""
