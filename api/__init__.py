"""The REST service: FastAPI app, routers, schemas, auth, metrics and the hot-swapped serving index."""
