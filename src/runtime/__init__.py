"""Where and how a run executes: device and precision, DistributedDataParallel, the GPU and CPU threads
of each job of a parallel sweep, the record of a run (run_info.json), and the benchmark with its reference loop."""
