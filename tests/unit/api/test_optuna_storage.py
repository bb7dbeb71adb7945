"""The adapter over Optuna's storage: if an Optuna upgrade changes how a study's and a
trial's system attributes are reached, these fail before any study is scheduled wrong."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.pruners import NopPruner
from optuna.samplers import GridSampler, QMCSampler, RandomSampler
from optuna.trial import TrialState, create_trial

from api.studies.optuna_storage import StoredStudy


def made(name: str = "stu_adapter", sampler=None) -> StoredStudy:
    return StoredStudy.create(name, sampler or RandomSampler(seed=0), NopPruner(), "maximize")


class TestStoredStudy:
    def test_study_attributes_go_in_and_come_back(self):
        stored = made()
        stored.set_study_attrs({"grid_position": [1, 2], "qmc:seed": 7})
        assert stored.study_attrs() == {"grid_position": [1, 2], "qmc:seed": 7}

    def test_a_trial_is_found_by_its_number(self):
        stored = made()
        for number, rung in enumerate(("a", "b", "c")):
            stored.study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=0.5 + number / 10,
                    params={"lr": 0.01},
                    distributions={"lr": FloatDistribution(0.001, 0.1)},
                    system_attrs={"rung": rung},
                )
            )
        assert [stored.trial_attrs(n) for n in range(3)] == [
            {"rung": "a"},
            {"rung": "b"},
            {"rung": "c"},
        ]

    def test_what_samplers_write_while_asking_is_read_back(self):
        # QMC keeps its place in its sequence among the study's system attributes (from the
        # second trial on); the grid sampler each trial's grid point among the trial's.
        lr = {"lr": FloatDistribution(0.001, 0.1)}
        qmc = made(sampler=QMCSampler(seed=3))
        for _ in range(3):
            qmc.study.tell(qmc.study.ask(lr), 0.5)
        assert list(qmc.study_attrs().values()) == [1]
        assert next(iter(qmc.study_attrs())).startswith("qmc:")
        grid = made(sampler=GridSampler({"lr": [0.01, 0.02]}, seed=1))
        trial = grid.study.ask(lr)
        assert grid.trial_attrs(trial.number) == {
            "search_space": {"lr": [0.01, 0.02]},
            "grid_id": grid.study.get_trials(deepcopy=False)[trial.number].system_attrs["grid_id"],
        }

    def test_two_studies_in_one_process_keep_apart(self):
        first, second = made("stu_first"), made("stu_second")
        first.set_study_attrs({"who": "first"})
        assert second.study_attrs() == {}
        assert optuna.__version__.split(".")[0] == "5"  # the major version this is tested on
