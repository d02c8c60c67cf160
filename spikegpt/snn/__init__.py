"""Spiking-neural-network primitives (neurons, surrogates, codes, losses, learning rules, QAT)."""
