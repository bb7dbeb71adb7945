"""Progress within an epoch: what the meter reports, how often, and what training sends."""

import time

import pytest

from shared.messages import BatchProgress
from testbed.synthetic_mnist import write_synthetic_mnist
from tests.unit.torch_threads import one_torch_thread
from tests.unit.worker.reporters import RecordingReporter
from tests.unit.worker.small_jobs import CPU_FP32, TRAIN_SUBSET, small_job
from worker.training.data import load_mnist
from worker.training.loop import train
from worker.training.progress import PROGRESS_INTERVAL, ProgressMeter, images_per_epoch


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(
    images_by_epoch: list[int], evaluation_share: float = 0.1
) -> tuple[ProgressMeter, FakeClock, list[BatchProgress]]:
    clock = FakeClock()
    reports: list[BatchProgress] = []
    progress = ProgressMeter(
        reports.append, images_by_epoch, evaluation_share=evaluation_share, clock=clock
    )
    return progress, clock, reports


class TestProgressMeter:
    def test_an_epoch_reports_when_it_begins_with_no_pace_yet(self):
        progress, _, reports = meter([640])
        progress.start_epoch(0, batches=10)
        assert reports == [
            BatchProgress(
                epoch=0, batches_completed=0, batches=10, images_per_second=0.0, eta_seconds=None
            )
        ]

    def test_reports_at_most_once_an_interval_and_after_the_last_batch(self):
        progress, clock, reports = meter([64 * 20])
        progress.start_epoch(0, batches=20)
        for batch in range(1, 21):
            clock.now += 0.15
            progress.batch_done(batch, batch * 64)
        # 0.15 s a batch: due again after the 4th (0.6 s), the 8th (1.2 s), the 12th (1.8 s)
        # and the 16th (2.4 s); the 20th is the last.
        assert [report.batches_completed for report in reports] == [0, 4, 8, 12, 16, 20]

    def test_images_per_second_are_the_epochs_images_over_its_time(self):
        progress, clock, reports = meter([1000])
        progress.start_epoch(0, batches=10)
        clock.now += 2.0
        progress.batch_done(5, 500)
        assert reports[-1].images_per_second == pytest.approx(250.0)

    def test_eta_covers_the_epoch_the_later_epochs_and_every_evaluation_left(self):
        progress, clock, reports = meter([100, 100, 50], evaluation_share=0.1)
        progress.start_epoch(0, batches=4)
        clock.now += 1.0
        progress.batch_done(2, 50)
        # 50 images a second; left: 50 images of this epoch, 150 of later ones, and three
        # evaluations at a tenth of their epoch's training (10 + 10 + 5 images' worth).
        assert reports[-1].eta_seconds == pytest.approx((50 + 150 + 25) / 50)

    def test_a_new_epoch_estimates_from_the_last_epochs_pace(self):
        progress, clock, reports = meter([100, 100], evaluation_share=0.0)
        progress.start_epoch(0, batches=2)
        clock.now += 2.0
        progress.batch_done(2, 100)
        assert reports[-1].eta_seconds == pytest.approx(2.0)
        clock.now += 0.3  # evaluation
        progress.start_epoch(1, batches=2)
        assert reports[-1].images_per_second == 0.0
        assert reports[-1].eta_seconds == pytest.approx(2.0)

    def test_the_eta_of_the_last_batch_of_the_run_is_its_evaluation(self):
        progress, clock, reports = meter([100], evaluation_share=0.1)
        progress.start_epoch(0, batches=1)
        clock.now += 1.0
        progress.batch_done(1, 100)
        assert reports[-1].eta_seconds == pytest.approx(0.1)

    @pytest.mark.parametrize(
        ("images", "batch_size", "trained"), [(128, 64, 128), (130, 64, 130), (129, 64, 128)]
    )
    def test_an_epoch_trains_on_all_but_a_final_batch_of_one(self, images, batch_size, trained):
        assert images_per_epoch(images, batch_size) == trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[RecordingReporter, float]:
    """Three epochs, the first in smaller batches (so more of them), and how long they took."""
    folder = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(folder, train=512, test=256)
    mnist = load_mnist(folder)
    spec = small_job(
        epochs=3,
        batch_size_schedule=[{"epoch": 0, "batch_size": 32}, {"epoch": 1, "batch_size": 64}],
    )
    reporter = RecordingReporter()
    with one_torch_thread():
        started = time.perf_counter()
        train(spec, mnist, reporter, hardware=CPU_FP32)
        return reporter, time.perf_counter() - started


class TestTrainingProgress:
    def test_batches_completed_rise_from_zero_to_each_epochs_batches(self, trained):
        reporter, _ = trained
        assert {(p.phase, p.epoch, p.batches) for p in reporter.progress} == {
            ("train", 0, TRAIN_SUBSET // 32),
            ("train", 1, TRAIN_SUBSET // 64),
            ("train", 2, TRAIN_SUBSET // 64),
        }
        for epoch in range(3):
            completed = [p.batches_completed for p in reporter.progress if p.epoch == epoch]
            assert completed[0] == 0
            assert completed == sorted(completed)
            assert completed[-1] == TRAIN_SUBSET // reporter.rows[epoch].batch_size

    def test_the_epochs_last_report_has_its_measured_images_per_second(self, trained):
        reporter, _ = trained
        for row in reporter.rows:
            last = [p for p in reporter.progress if p.epoch == row.epoch][-1]
            assert last.images_per_second == pytest.approx(row.images_per_second, rel=0.25)

    def test_the_eta_is_unknown_only_until_the_first_pace_and_then_shrinks(self, trained):
        reporter, _ = trained
        assert reporter.progress[0].eta_seconds is None
        etas = [p.eta_seconds for p in reporter.progress[1:]]
        assert all(eta is not None and eta >= 0 for eta in etas)
        ends = [[p for p in reporter.progress if p.epoch == epoch][-1] for epoch in range(3)]
        assert ends[0].eta_seconds > ends[1].eta_seconds > ends[2].eta_seconds

    def test_reports_are_throttled(self, trained):
        reporter, elapsed = trained
        # Each epoch reports when it begins and after its last batch, and in between at
        # most once an interval, however many batches it has.
        assert len(reporter.progress) <= 3 * 2 + elapsed / PROGRESS_INTERVAL
