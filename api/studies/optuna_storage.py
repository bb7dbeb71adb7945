"""The one place Tunelab reaches into an Optuna study's storage: the system attributes that
carry a sampler's and a pruner's state (grid positions, QMC's place in its sequence, ASHA's
rungs) between the ledger and Optuna, and what a study kept between decisions is told of a
running trial since (its new values, attributes and end: api/studies/kept_study.py).

`optuna.Study` and `FrozenTrial` expose no public way to these attributes by study or trial
number; their ids live in private fields (`_storage`, `_study_id`, `_trial_id`). This
adapter keeps the storage it made the study in, and finds the ids through the storage's own
public lookups instead, so nothing here depends on Optuna's private names. Its test
(tests/unit/api/test_optuna_storage.py) fails loudly if an upgrade changes these lookups.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState


@dataclass
class StoredStudy:
    """An in-memory Optuna study and the storage that holds it."""

    study: optuna.Study
    storage: InMemoryStorage
    _study_id: int = field(init=False)

    def __post_init__(self) -> None:
        self._study_id = self.storage.get_study_id_from_name(self.study.study_name)

    @classmethod
    def create(
        cls,
        name: str,
        sampler: BaseSampler,
        pruner: BasePruner,
        direction: Literal["minimize", "maximize"] | None = None,
        directions: Sequence[Literal["minimize", "maximize"]] | None = None,
    ) -> "StoredStudy":
        """A study of one objective (`direction`), or of several (`directions`)."""
        storage = InMemoryStorage()
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=name,
            direction=direction,
            directions=directions,
        )
        return cls(study, storage)

    def study_attrs(self) -> dict[str, Any]:
        return dict(self.storage.get_study_system_attrs(self._study_id))

    def set_study_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.storage.set_study_system_attr(self._study_id, key, value)

    def trial_attrs(self, number: int) -> dict[str, Any]:
        return dict(self.storage.get_trial_system_attrs(self._trial_id(number)))

    def trials(self) -> list[FrozenTrial]:
        """The study's trials by number, as the storage holds them (not copies: read only)."""
        return self.storage.get_all_trials(self._study_id, deepcopy=False)

    def set_trial_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        trial_id = self._trial_id(number)
        for key, value in attrs.items():
            self.storage.set_trial_system_attr(trial_id, key, value)

    def report(self, number: int, step: int, value: float) -> None:
        """A running trial's value after `step`."""
        self.storage.set_trial_intermediate_value(self._trial_id(number), step, value)

    def finish(self, number: int, state: TrialState, values: Sequence[float] | None) -> None:
        """Ends a running trial: complete, pruned or failed, with its values."""
        self.storage.set_trial_state_values(self._trial_id(number), state, values)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
