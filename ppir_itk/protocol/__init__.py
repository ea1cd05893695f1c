"""The two-party protocol: messages, sessions, the fixed party's server, mutual TLS.

Sequence of one registration (moving party M drives, fixed party F answers)::

    M -> F  Hello(backend, levels, sampling, seed)      F -> M  Welcome(fixed geometry, budget)
    for each level l:
      M -> F  OpenLevel(l)                              F -> M  LevelOpened(level grid geometry)
      M -> F  SelectPoints(all | urs | revealed GMS)    F -> M  PointsSelected(count)
      backend set-up, once per level (clear: F -> M the level image, NOT private)
      for each iteration: backend messages (clear: none)
    M -> F  Close                                       F -> M  Closed(F's accounting)

What each message reveals is tabled in :mod:`ppir_itk.fixed_party`; the
backend modules say what their own messages reveal.
"""
