"""The video decoding layer: one clock (presentation timestamps), pictures as displayed, and
the decoder that reads each file exactly (decord, decord on a remux, or PyAV)."""
