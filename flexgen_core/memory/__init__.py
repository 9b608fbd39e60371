"""Where bytes live: the three tiers (compute device, CPU, disk) with byte accounting, page-locked
host memory, the I/O queues that overlap transfers with compute, the KV cache, 4/8-bit group-wise
compression and the weight store. Imports the model room only."""
