"""Reference implementation of the online disaggregated DataFlow control plane.

This package is the system under test. It never imports `harness`: the harness
drives it only through processes, failpoints, files and the store.
"""
