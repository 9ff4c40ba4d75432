"""dataflow-harness: fault injection, history checking and store certification
for the reference DataFlow control plane (`reference_impl`)."""
