"""`lensperf bench`: training throughput, FLOPs, reference comparison and time-to-target."""
