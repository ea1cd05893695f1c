"""The transport: typed messages, framing, sessions, the gRPC servers' base, mutual TLS.

It carries the parties' envelopes and knows no party (an import-linter contract).

Sequence of one registration (moving party M drives, fixed party F answers)::

    M -> F  Hello(backend, levels, sampling, seed)      F -> M  Welcome(fixed geometry, budget)
    for each level l:
      M -> F  OpenLevel(l)                              F -> M  LevelOpened(level grid geometry)
      M -> F  SelectPoints(all | urs | revealed GMS,    F -> M  PointsSelected(count)
                           B-spline control grid)
      backend set-up, once per level (clear: F -> M the level image, NOT private;
        he: F -> M the encrypted level image; spdz: F -> M the masked level image)
      for each iteration: backend messages (clear: none; he: M -> F one ciphertext,
        F -> M masked sums; spdz: M -> F masked rows, F -> M its shares of the sums)
    spdz only: M and F each talk to the dealer D (masks, triples) on their own sessions
    M -> F  Close                                       F -> M  Closed(F's accounting)

What each message carries and reveals is tabled in code: :data:`ppir_itk.disclosure.SESSION`
for these, each backend module's ``TABLE`` for its own (docs/privacy.md shows them). Either
side also sends an empty ``Heartbeat`` frame after a third of its deadline of silence.
"""
