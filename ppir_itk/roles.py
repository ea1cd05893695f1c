"""The three roles of a registration, as certificates name them and CrypTen ranks them.

The moving party drives the registration (rank 0), the fixed party answers it
(rank 1), and the dealer hands SPDZ's correlated randomness to both. A
certificate's common name is its role's name; servers check it on every
session.
"""

from __future__ import annotations

MOVING, FIXED = 0, 1  # CrypTen ranks of the two parties
MOVING_PARTY, FIXED_PARTY, DEALER = "moving-party", "fixed-party", "dealer"
PARTIES = {MOVING_PARTY: MOVING, FIXED_PARTY: FIXED}  # certificate name -> rank
