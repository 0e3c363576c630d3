"""The ranking service: FastAPI over a model bundle (encoder + runtime), see ``serving.app``."""
