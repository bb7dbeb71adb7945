"""The one place Tunelab reaches into an Optuna study's storage: the system attributes that
carry a sampler's and a pruner's state (grid positions, QMC's place in its sequence, ASHA's
rungs) between the ledger and Optuna.

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
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return dict(self.storage.get_trial_system_attrs(trial_id))
