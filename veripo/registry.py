"""The one name -> object registry of veripo: every family of things chosen by a name in a config or
on a command line is a `Registry` (advantage estimators, policy losses, KL estimators, aggregation
modes, preference losses, rewards, judge backends, synthetic question families).

    ADV = Registry("advantage estimator")

    @ADV.register("grpo")
    def grpo(...): ...

    ADV.get("grpo")      # the function
    ADV.get("gpro")      # UnknownNameError: unknown advantage estimator 'gpro'; known: drgrpo, grpo
    ADV.names()          # ['drgrpo', 'grpo']  (sorted: for messages and config choices)
    ADV.ordered_names()  # in registration order (what code that draws by index must use)

Registries, not if/elif chains; an unknown name lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from veripo.errors import UserError

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(UserError, KeyError, ValueError):
    """An unregistered name; the message lists the registered ones. Both a KeyError and a ValueError,
    so ``except ValueError`` (config validation) and ``except KeyError`` (mapping lookups) catch it."""

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return str(self.args[0])


class Registry(Generic[T]):
    """Names (strings) to objects of one kind; `kind` is used in error messages only.

    Registration order is kept: `ordered_names()` and `items()` follow it (code that draws an entry
    by index, e.g. the synthetic data generator, depends on it). `names()` and iteration are sorted."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its argument under `name`. Re-registering the same object is a no-op
        (module reloads); registering a different object under a taken name raises ValueError."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorate(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered ({old!r})")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """The object registered under `name`; `UnknownNameError` listing the known names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted (error messages, config choices)."""
        return sorted(self._items)

    def ordered_names(self) -> list[str]:
        """The registered names in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order."""
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
