"""Events and observers, ITK style.

Observers are plain callables taking no argument, as in ITK's and
SimpleITK's Python wrappers, or ITK's ``itk.PyCommand`` objects (their command
callable is called, as ITK calls it); inside a callback, read the live state from
the object (``GetOptimizerIteration()``, ``GetMetricValue()``, ...). An event can
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


def as_observer(callback: Any) -> Callable[[], Any]:
    """A callable of no argument for a callable or an ``itk.PyCommand``."""
    if hasattr(callback, "GetCommandCallable"):
        import itk

        # Through Execute, as ITK calls it (so a callable set later is the one called):
        # ITK 5.4's GetCommandCallable gives away a reference it keeps, one per call.
        any_event = itk.AnyEvent()
        return lambda: callback.Execute(callback, any_event)
    if not callable(callback):
        raise TypeError("an observer must be callable or an itk.PyCommand")
    return callback


class Observable:
    """Holds observers and invokes them, like ``itk::Object``."""

    def __init__(self) -> None:
        self._observers: dict[int, tuple[Event, Callable[[], Any]]] = {}
        self._next_tag = 0

    def AddObserver(self, event: Any, callback: Any) -> int:  # noqa: N802
        """Call ``callback()`` (a callable or an ``itk.PyCommand``) on every ``event``;
        returns a tag for :meth:`RemoveObserver`."""
        tag = self._next_tag
        self._next_tag += 1
        self._observers[tag] = (as_event(event), as_observer(callback))
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
