"""The commands that talk to the API over HTTP: jobs, studies, checkpoints, plots, predictions
and exports, through cli.client.http_client."""
