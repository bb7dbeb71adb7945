"""Where job specs differ: each spec flattened to its leaves, keyed by the JSON paths a
study's space uses (`optimizer.lr`, `model.layers[0].out_channels`), and only the paths
whose values are not the same in every spec kept. A list of plain values (`tags`,
`milestones`, `betas`) is one leaf: `["a", "b"]` against `[]` reads better whole."""

from collections.abc import Mapping, Sequence
from typing import Any


class Missing:
    """The value at a path one spec has and another has not (a layer more, another
    optimizer's field)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """`{"a": {"b": [{"c": 2}], "d": [1, 2]}}` as `{"a.b[0].c": 2, "a.d": [1, 2]}`; an empty
    object or list is a leaf of its own, so `[]` and a missing path stay different."""
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten(item, f"{path}.{key}" if path else str(key))
        return flat
    if isinstance(value, list) and any(isinstance(item, Mapping | list) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat |= flatten(item, f"{path}[{index}]")
        return flat
    return {path: value}


def differences(specs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Each path whose value is not the same in all `specs`, with the value in each (MISSING
    where a spec lacks it), in the order the paths first appear."""
    flats = [flatten(spec) for spec in specs]
    paths = list(dict.fromkeys(path for flat in flats for path in flat))
    found = {}
    for path in paths:
        values = [flat.get(path, MISSING) for flat in flats]
        # Compared as JSON values, where 1 == 1.0 but True is not 1.
        if any(not _same(values[0], value) for value in values[1:]):
            found[path] = values
    return found


def _same(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)
