"""Raw readers, prepare, prepared datasets and the batch loader."""
