"""Stores whose record types certification must be told or must find.

`UnannotatedForeignStore` uses `foreign_records` but neither annotates
`commit_sample` nor has `SampleRef` in its namespace: certification falls back to
the reference's records, the store rejects them on the first read, and certify
stops with exit 2 naming `tests.store_zoo.foreign_records` for `--records`.
`AnnotatedForeignStore` annotates `commit_sample`, so its records are found; and
`DropsShardStore` loses the extra `shard` field, which only records derived
from the store's own types can catch (tier 1, round-trip).
"""

import json

from tests.store_zoo import SqliteStore
from tests.store_zoo import foreign_records as recs


class UnannotatedForeignStore(SqliteStore):
    @staticmethod
    def _dump(ref) -> str:
        return json.dumps(recs.to_dict(ref), sort_keys=True)

    @staticmethod
    def _load(text: str):
        return recs.from_dict(json.loads(text))

    def commit_sample(self, ref):
        return self.commit_samples([ref])[0]


class AnnotatedForeignStore(UnannotatedForeignStore):
    def commit_sample(self, ref: recs.SampleRef) -> bool:
        return self.commit_samples([ref])[0]


class DropsShardStore(AnnotatedForeignStore):
    @staticmethod
    def _dump(ref) -> str:
        d = recs.to_dict(ref)
        d["shard"] = 0
        return json.dumps(d, sort_keys=True)



