//! loadgen's workload format, shared with the scheduler simulator (`capstan scheduler
//! simulate`), which schedules the pods a workload would create without a cluster.

pub mod allocator;
pub mod runtime;
pub mod workload;
