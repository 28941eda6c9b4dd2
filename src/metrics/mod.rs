//! What the cluster measures about itself: loop counters and their Prometheus text
//! (`loops`), each core's counters and gauges (`cores`), and the lock-free per-core load
//! slots the coordinator reads (`load_slots`), and the stage histograms a client fills
//! from its traced writes (`stages`).

pub mod cores;
pub mod load_slots;
pub mod loops;
pub mod stages;
