"""Launches real Tunelab stacks for tests and benchmarks: the API and workers as processes on
free ports (`stack`), a fresh database and queue on the machine's PostgreSQL and Redis
(`services`), and MNIST-shaped files for the workers to train on (`synthetic_mnist`).

Not installed with Tunelab: it is run from the repository, as the tests and benchmarks are.
"""
