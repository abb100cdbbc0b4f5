"""Unit tests of the library (xdr/): each module against an independent oracle, mostly without Ray."""
