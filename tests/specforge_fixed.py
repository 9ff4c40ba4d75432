"""SpecForge 0.2.0's SQLiteMetadataStore with one change: `durable_marker` reads
the acked set and the marker inside one read transaction.

Used by tests/test_certify_specforge.py to show that the P5 reproducer written
by certify passes once the torn read is gone. Written here from the store's
documented behaviour (its tables `acked(sample_id)` and `marker(k, v)`, values
JSON-encoded); no upstream code is copied.
"""

import json

from specforge.runtime.control_plane.metadata_store import SQLiteMetadataStore


class OneTxnMarkerStore(SQLiteMetadataStore):
    def durable_marker(self):
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                ids = {row[0] for row in conn.execute("SELECT sample_id FROM acked")}
                kv = {k: v for k, v in conn.execute("SELECT k, v FROM marker")}
            finally:
                conn.execute("COMMIT")
        step = json.loads(kv["global_step"]) if "global_step" in kv else None
        flag = json.loads(kv["optimizer_durable"]) if "optimizer_durable" in kv else False
        return {"acked": ids, "global_step": step, "optimizer_durable": flag}
