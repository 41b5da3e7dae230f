"""Rx: the AFS remote procedure call transport, its security classes and interfaces."""
