"""Files -> knowledge base: loaders, chunking and the incremental ingest pipeline."""
