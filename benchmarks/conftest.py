import os

os.environ.setdefault("LENSPERF_PROGRESS", "0")
