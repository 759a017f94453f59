"""Where and how a run executes: device and precision, DistributedDataParallel, GPU claims of parallel
sweep jobs, the record of a run (run_info.json), and the speed benchmark with its reference loop."""
