"""The mixopt service: FastAPI routes over a Store, with the mixers doing the maths."""
