//! Helpers of the collectives' tests: local jobs on free ports and hand-made ranks.

use super::rendezvous::hello;
use super::DistContext;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A context for `rank` of `world` whose id port (`MASTER_PORT + 1`) is `port` on localhost.
pub(crate) fn local(rank: usize, world: usize, port: u16) -> DistContext {
    DistContext { rank, world_size: world, local_rank: rank, local_world_size: world, master_addr: "127.0.0.1".into(), master_port: port - 1 }
}

/// A port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A rank by hand: connects to rank 0 on `port` (waiting for it to listen) and sends the
/// hello of `rank` in a world of `world`.
pub(crate) fn raw_rank(port: u16, rank: usize, world: usize) -> TcpStream {
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.write_all(&hello(rank, world)).unwrap();
    s
}
