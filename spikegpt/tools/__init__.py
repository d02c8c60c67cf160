"""Tools built on the model: operation and energy accounting, spike plots, and the ``spikegpt`` command line.

Nothing else in the package imports these modules.
"""
