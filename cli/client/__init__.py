"""The commands that talk to the API over HTTP: jobs, studies, checkpoints, plots, predictions
and exports, through cli.client.http_client."""

# The API's own tests read its event streams with the client's parser, by this name.
from cli.client.server_events import parse_events

__all__ = ["parse_events"]
