"""Broken variants of the data-parallel consumer (see reference_impl.variant).

Each returns the patches that turn `reference_impl.dp_consumer` into a known
data-parallel bug; tests/test_dp_consumer.py asserts the harness reports it.
"""

from __future__ import annotations

from reference_impl import dp_consumer


def grads_summed_not_averaged():
    """The gradient all-reduce sums over the ranks and forgets to divide.

    gloo has no AVG reduction, so the division by world_size is the caller's;
    without it every rank's contribution lands world_size times: the witness
    reads world_size for every sample (P1, duplicate training).
    """

    def allreduce_grads(self, params):
        flat = self.flat_grads(params)
        self._call("gradient all_reduce", self.dist.all_reduce, flat, op=self.dist.ReduceOp.SUM)
        self.set_grads(params, flat)  # no division by world_size

    return [(dp_consumer.Comm, "allreduce_grads", allreduce_grads)]

