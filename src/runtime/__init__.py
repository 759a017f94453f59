"""Where and how a run executes: device and precision, DistributedDataParallel, the GPU and CPU threads
of each job of a parallel sweep, and the record of a run (run_info.json)."""
