//! A client's side of the cluster, sans-IO: one request's life (`call`: attempts, redirects,
//! retries, outcomes), routing decisions and the placement-table cache (`routing`), and the
//! health of the nodes it talks to (`peer_health`: backoff and circuit breaker, shared with
//! the runtime's peer connections).

pub mod call;
pub mod peer_health;
pub mod routing;
