"""The model server: REST (FastAPI) and gRPC over one core (:class:`ModelRegistry`)."""
