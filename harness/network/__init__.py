"""The network between client processes and a store server: per-node TCP proxies and their faults."""
