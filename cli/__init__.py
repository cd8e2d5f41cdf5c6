"""The ``dgr2`` command line (:mod:`cli.main`), the top of the layers: it runs the flows."""
