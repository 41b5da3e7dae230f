"""Cells and volume location: CellServDB, DNS discovery, the VL client."""
