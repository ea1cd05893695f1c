"""Events and observers, ITK style.

Observers are plain callables taking no argument, as in ITK's and
SimpleITK's Python wrappers; inside a callback, read the live state from the
object (``GetOptimizerIteration()``, ``GetMetricValue()``, ...). An event can
be named by this module's :class:`Event`, by ITK's event objects
(``itk.IterationEvent()``), by SimpleITK's constants
(``sitk.sitkIterationEvent``) or by name (``"IterationEvent"``).

Examples
--------
>>> seen = []
>>> subject = Observable()
>>> tag = subject.AddObserver("IterationEvent", lambda: seen.append(1))
>>> subject.InvokeEvent(Event.ITERATION)
>>> seen
[1]
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ppir_itk.errors import InputError


class Event(enum.Enum):
    START = "StartEvent"
    ITERATION = "IterationEvent"
    MULTI_RESOLUTION_ITERATION = "MultiResolutionIterationEvent"
    END = "EndEvent"


# SimpleITK's event enum values, by name (sitk.sitkIterationEvent == 6, ...).
_SITK_NAMES = {
    "sitkStartEvent": Event.START,
    "sitkIterationEvent": Event.ITERATION,
    "sitkMultiResolutionIterationEvent": Event.MULTI_RESOLUTION_ITERATION,
    "sitkEndEvent": Event.END,
}


def as_event(event: Any) -> Event:
    """The :class:`Event` an ITK event object, SimpleITK constant or name stands for."""
    if isinstance(event, Event):
        return event
    if hasattr(event, "GetEventName"):
        event = event.GetEventName()
    if isinstance(event, int):
        import SimpleITK as sitk

        for name, ours in _SITK_NAMES.items():
            if getattr(sitk, name, None) == event:
                return ours
    if isinstance(event, str):
        for ours in Event:
            if event in (ours.value, ours.name, ours.name.lower()):
                return ours
    raise InputError(f"unknown event {event!r}: use ppir_itk.Event or an ITK/SimpleITK event")


class Observable:
    """Holds observers and invokes them, like ``itk::Object``."""

    def __init__(self) -> None:
        self._observers: dict[int, tuple[Event, Callable[[], Any]]] = {}
        self._next_tag = 0

    def AddObserver(self, event: Any, callback: Callable[[], Any]) -> int:  # noqa: N802
        """Call ``callback()`` on every ``event``; returns a tag for :meth:`RemoveObserver`."""
        if not callable(callback):
            raise TypeError("an observer must be callable")
        tag = self._next_tag
        self._next_tag += 1
        self._observers[tag] = (as_event(event), callback)
        return tag

    def RemoveObserver(self, tag: int) -> None:  # noqa: N802
        self._observers.pop(tag, None)

    def RemoveAllObservers(self) -> None:  # noqa: N802
        self._observers.clear()

    def InvokeEvent(self, event: Any) -> None:  # noqa: N802
        event = as_event(event)
        for observed, callback in list(self._observers.values()):
            if observed is event:
                callback()
