"""The operator's commands, run where the service runs: the API, the training workers (one per
GPU under a supervisor), the dev stack, database migrations, tenant keys and the training
data."""
