"""The data layer: the item catalog, dataset loaders, behaviour sequences, SID building and embeddings, and the
rejected records of lenient loading."""
