"""Label maps: how the 7 FER2013 emotions become the classes a model predicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.data.schema import EMOTIONS, DataError

_SPEC_HELP = ('expected "fer7", "fer4", or a mapping like '
              '{"name": "mine", "groups": {"negative": ["angry", "fear"], "happy": ["happy"]}}')


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Maps original emotion ids to new class ids; emotions mapped to -1 are dropped.

    Attributes:
        name: short name used in configs and reports.
        class_names: the new classes, in class-id order.
        lookup: int64 ``(7,)``; ``lookup[emotion_id]`` is the class id, or -1 if dropped.
    """

    name: str
    class_names: tuple[str, ...]
    lookup: np.ndarray

    def __post_init__(self) -> None:
        lookup = np.array(self.lookup, dtype=np.int64)
        k = len(self.class_names)
        if lookup.shape != (len(EMOTIONS),):
            raise DataError(f"label map {self.name!r}: lookup has shape {lookup.shape}; expected (7,)")
        if lookup.min() < -1 or lookup.max() >= k or set(range(k)) - set(lookup.tolist()):
            raise DataError(f"label map {self.name!r}: lookup {lookup.tolist()} must use every class id "
                            f"0..{k - 1} and -1 for dropped emotions")
        lookup.setflags(write=False)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "lookup", lookup)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(e for e, c in zip(EMOTIONS, self.lookup) if c < 0)

    def groups(self) -> dict[str, list[str]]:
        """Class name -> the emotions it holds, in class order."""
        return {name: [e for e, c in zip(EMOTIONS, self.lookup) if c == i]
                for i, name in enumerate(self.class_names)}

    def to_spec(self) -> dict[str, Any]:
        """A plain dict that ``from_spec`` turns back into this map."""
        return {"name": self.name, "groups": self.groups()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelMap):
            return NotImplemented
        return (self.name, self.class_names, self.lookup.tolist()) == (
            other.name, other.class_names, other.lookup.tolist())

    def __hash__(self) -> int:
        return hash((self.name, self.class_names, tuple(self.lookup.tolist())))

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any] | LabelMap) -> LabelMap:
        """Build a map from a registered name, a ``{"name", "groups"}`` mapping, or a LabelMap.

        Emotions that no group lists are dropped.
        """
        if isinstance(spec, LabelMap):
            return spec
        if isinstance(spec, str):
            if spec not in LABEL_MAPS:
                raise DataError(f"unknown label map {spec!r}; known label maps: "
                                f"{', '.join(LABEL_MAPS)}. Or give a mapping: {_SPEC_HELP}")
            return LABEL_MAPS[spec]
        if not isinstance(spec, Mapping):
            raise DataError(f"label map spec is a {type(spec).__name__}; {_SPEC_HELP}")
        return _from_mapping(spec)


def _from_mapping(spec: Mapping[str, Any]) -> LabelMap:
    unknown = sorted(set(map(str, spec)) - {"name", "groups"})
    name = spec.get("name", "custom")
    where = f"label map {name!r}"
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: name, groups")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"label map field 'name' must be a non-empty string, got {name!r}")
    groups = spec.get("groups")
    if not isinstance(groups, Mapping) or not groups:
        raise DataError(f"{where}: field 'groups' must be a non-empty mapping of class name -> "
                        f"list of emotions, got {groups!r}; {_SPEC_HELP}")
    lookup = np.full(len(EMOTIONS), -1, dtype=np.int64)
    owner: dict[str, str] = {}
    for class_id, (group, members) in enumerate(groups.items()):
        field = f"groups.{group}"
        if not isinstance(group, str) or not group.strip():
            raise DataError(f"{where}: group name {group!r} must be a non-empty string")
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, (list, tuple)) or not members:
            raise DataError(f"{where}: {field} is empty or not a list; list at least one of "
                            f"{', '.join(EMOTIONS)}, or remove the group")
        for member in members:
            emotion = member.strip().lower() if isinstance(member, str) else member
            if emotion not in EMOTIONS:
                raise DataError(f"{where}: {field} lists unknown emotion {member!r}; "
                                f"valid emotions: {', '.join(EMOTIONS)}")
            if emotion in owner:
                raise DataError(f"{where}: emotion {emotion!r} is listed in {owner[emotion]} and in "
                                f"{field}; each emotion may belong to at most one group")
            owner[emotion] = field
            lookup[EMOTIONS.index(emotion)] = class_id
    return LabelMap(name=name, class_names=tuple(groups), lookup=lookup)


LABEL_MAPS: dict[str, LabelMap] = {
    "fer7": LabelMap("fer7", EMOTIONS, np.arange(len(EMOTIONS))),
    # The 4-class grouping: the rarer negative emotions pooled against the three clear ones.
    "fer4": _from_mapping({"name": "fer4", "groups": {
        "negative": ["angry", "disgust", "fear", "sad"],
        "happy": ["happy"], "surprise": ["surprise"], "neutral": ["neutral"]}}),
}
