"""A stand-in for the broker, for the API built in process."""

from dataclasses import dataclass, field


@dataclass
class RecordingDispatcher:
    """Stands in for the broker: records the job ids it was asked to send."""

    sent: list[str] = field(default_factory=list)
    broken: bool = False

    def send(self, job_id: str) -> bool:
        if self.broken:
            return False
        self.sent.append(job_id)
        return True

    def ping(self) -> None:
        if self.broken:
            raise ConnectionError("broker down")
