"""The torch side of mixopt (extra ``mixopt[trainer]``): a nanoGPT-sized proxy trainer and a worker
that claims runs over HTTP. It talks to the service only through ``mixopt.client``."""
