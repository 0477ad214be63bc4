//! The tokio runtime of the processes that run the control plane (`capstan`, and `loadgen`'s
//! embedded mode), tuned for one thing: with the components calling the API server in-process
//! (`client::local`), a worker always has a runnable task (a request handed over as a call
//! spawns its handler, which the caller's next call follows), and tokio's default of polling
//! for I/O only every 61 tasks starved the connections of remote clients. In the density run
//! with the nodes across the wire that made their pod watch fall 10,000 events behind and be
//! closed, and the whole run 25 % slower (850 pods/s against 1,100; bench/RESULTS.md); polling
//! every 8 tasks gave 1,136-1,231. The cost is more `epoll_wait` calls with nothing to report:
//! about one point of a core for 5,000 idle hollow nodes' heartbeats (6.9-8.0 % against 6.2-6.3 %).

/// Tasks a worker runs between two polls for I/O events (tokio's default is 61).
pub const EVENT_INTERVAL: u32 = 8;

/// A multi-threaded runtime builder with the setting above.
pub fn multi_thread() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.event_interval(EVENT_INTERVAL);
    b
}
