"""REST serving of one InferenceModel: FastAPI app, dynamic batching, request limits (see `create_app`)."""
