//! The rendezvous of a multi-process job: rank 0 listens on `MASTER_ADDR`'s id port
//! ([`DistContext::id_port`]), every other rank connects to it, and rank 0 hands each of them a
//! payload (NCCL's unique id, or nothing for the TCP collective). A rank that never arrives, an
//! unreachable rank 0, a second process claiming the same rank or a job of another size end in
//! an error that says which, after the timeout, never in a hang.

use super::collective::mismatch;
use super::DistContext;
use crate::error::{Result, TrainError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Identifies this protocol's messages (and refuses stray connections).
const MAGIC: &[u8; 8] = b"DEQZOO01";

/// Largest payload accepted in a rendezvous (NCCL's id is 128 bytes).
const MAX_PAYLOAD: u64 = 1 << 20;

/// How long a rank waits for the rendezvous and for each collective: `DEQ_DIST_TIMEOUT`
/// seconds, 600 by default (PyTorch's default process-group timeout is 10 to 30 minutes).
pub fn dist_timeout() -> Result<Duration> {
    parse_timeout(std::env::var("DEQ_DIST_TIMEOUT").ok().as_deref())
}

fn parse_timeout(v: Option<&str>) -> Result<Duration> {
    match v {
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            _ => Err(TrainError::Config { key: "DEQ_DIST_TIMEOUT".into(), message: format!("`{v}` is not a positive number of seconds") }),
        },
        None => Ok(Duration::from_secs(600)),
    }
}

/// The open connections after a rendezvous: on rank 0 one stream per other rank (index
/// `rank - 1`), elsewhere the stream to rank 0.
pub(crate) struct Links {
    /// The streams, in rank order.
    pub streams: Vec<TcpStream>,
    /// The payload rank 0 handed out (NCCL's id).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub payload: Vec<u8>,
}

/// Runs the rendezvous of `ctx` within `timeout`: rank 0 sends `payload` to every rank and
/// returns it; the others return what they received.
pub(crate) fn rendezvous(ctx: &DistContext, payload: &[u8], timeout: Duration) -> Result<Links> {
    let port = ctx.id_port()?;
    let deadline = Instant::now() + timeout;
    if ctx.rank == 0 {
        serve(ctx, port, payload, deadline, timeout)
    } else {
        join(ctx, port, deadline, timeout)
    }
}

fn serve(ctx: &DistContext, port: u16, payload: &[u8], deadline: Instant, timeout: Duration) -> Result<Links> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| TrainError::Config {
        key: "MASTER_PORT".into(),
        message: format!("rank 0 cannot listen on port {port} for the other ranks: {e} (another job on this port? set MASTER_PORT or DEQ_ID_PORT)"),
    })?;
    listener.set_nonblocking(true).map_err(net)?;
    let mut streams: Vec<Option<TcpStream>> = (1..ctx.world_size).map(|_| None).collect();
    while streams.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).map_err(net)?;
                s.set_read_timeout(Some(Duration::from_secs(10))).map_err(net)?;
                s.set_nodelay(true).map_err(net)?;
                // A connection that does not speak the protocol is dropped, not fatal.
                let Ok((rank, world)) = read_hello(&mut s) else {
                    tracing::warn!("rendezvous: ignored a connection from {peer} that is not a rank of this job");
                    continue;
                };
                if world != ctx.world_size {
                    let msg = format!("rank {rank} (from {peer}) belongs to a job of {world} processes, this one has {}", ctx.world_size);
                    let _ = write_frame(&mut s, b'E', msg.as_bytes());
                    return Err(mismatch(format!("rendezvous: {msg}")));
                }
                if rank == 0 || rank >= ctx.world_size || streams[rank - 1].is_some() {
                    let msg = if rank == 0 || rank >= ctx.world_size {
                        format!("a process (from {peer}) claims rank {rank}, which rank 0 cannot hand out in a world of {}", ctx.world_size)
                    } else {
                        format!("a second process claims rank {rank} (from {peer}): every rank must be started once")
                    };
                    let _ = write_frame(&mut s, b'E', msg.as_bytes());
                    return Err(mismatch(format!("rendezvous: {msg}")));
                }
                s.set_read_timeout(Some(timeout)).map_err(net)?;
                streams[rank - 1] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = streams.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| (i + 1).to_string()).collect();
                    return Err(mismatch(format!(
                        "rendezvous: rank(s) {} never connected to rank 0 on port {port} within {} s (did they start? is MASTER_ADDR={} reachable from them?)",
                        missing.join(", "),
                        timeout.as_secs_f64(),
                        ctx.master_addr
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(net(e)),
        }
    }
    let mut streams: Vec<TcpStream> = streams.into_iter().map(|s| s.expect("every rank arrived")).collect();
    for s in &mut streams {
        write_frame(s, b'P', payload).map_err(net)?;
    }
    Ok(Links { streams, payload: payload.to_vec() })
}

fn join(ctx: &DistContext, port: u16, deadline: Instant, timeout: Duration) -> Result<Links> {
    let addr = format!("{}:{port}", ctx.master_addr);
    let unreachable = |why: String| {
        mismatch(format!("rendezvous: rank {} could not reach rank 0 at {addr} within {} s: {why} (is rank 0 running? is MASTER_ADDR right?)", ctx.rank, timeout.as_secs_f64()))
    };
    let mut last;
    let mut stream = loop {
        match resolve(&addr) {
            Ok(a) => match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(unreachable(last));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stream.set_nodelay(true).map_err(net)?;
    stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).map_err(net)?;
    stream.write_all(&hello(ctx.rank, ctx.world_size)).map_err(net)?;
    let (tag, body) = read_frame(&mut stream, MAX_PAYLOAD).map_err(|e| unreachable(format!("no answer from rank 0 ({e})")))?;
    if tag == b'E' {
        return Err(mismatch(format!("rendezvous: rank 0 refused rank {}: {}", ctx.rank, String::from_utf8_lossy(&body))));
    }
    stream.set_read_timeout(Some(timeout)).map_err(net)?;
    Ok(Links { streams: vec![stream], payload: body })
}

fn net(e: std::io::Error) -> TrainError {
    mismatch(format!("rendezvous: {e}"))
}

fn resolve(addr: &str) -> std::result::Result<SocketAddr, String> {
    addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.next().ok_or_else(|| format!("{addr} resolves to no address"))
}

/// The message a joining rank opens with: the protocol's magic, its rank and the world size.
pub(crate) fn hello(rank: usize, world: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(rank as u64).to_le_bytes());
    b.extend_from_slice(&(world as u64).to_le_bytes());
    b
}

fn read_hello(s: &mut TcpStream) -> std::io::Result<(usize, usize)> {
    let mut b = [0u8; 24];
    s.read_exact(&mut b)?;
    if &b[..8] != MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a deq-zoo rank"));
    }
    let num = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes")) as usize;
    Ok((num(8), num(16)))
}

/// Writes one frame: a tag byte, the body's length (u64 little-endian) and the body.
pub(crate) fn write_frame(s: &mut TcpStream, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    s.write_all(&head)?;
    s.write_all(body)
}

/// Reads one frame, refusing bodies longer than `max` bytes before allocating them.
pub(crate) fn read_frame(s: &mut TcpStream, max: u64) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a peer announced a message of {len} bytes (at most {max})")));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::test_support::{free_port, local, raw_rank};

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_timeout(None).unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout(Some(" 2.5")).unwrap(), Duration::from_millis(2500));
        for bad in ["0", "-1", "soon", "inf", "NaN"] {
            let e = parse_timeout(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("DEQ_DIST_TIMEOUT") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn frames_longer_than_the_limit_are_refused_before_allocation() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            write_frame(&mut s, b'P', &[7; 16]).unwrap();
            write_frame(&mut s, b'P', &[7; 17]).unwrap();
        });
        let (mut r, _) = listener.accept().unwrap();
        assert_eq!(read_frame(&mut r, 16).unwrap(), (b'P', vec![7; 16]), "a frame of exactly the limit");
        let e = read_frame(&mut r, 16).unwrap_err().to_string();
        assert!(e.contains("17 bytes (at most 16)"), "{e}");
        writer.join().unwrap();
    }

    #[test]
    fn ranks_rank_zero_cannot_hand_out_are_refused() {
        for claimed in [0u64, 3, 9] {
            let port = free_port();
            let server = std::thread::spawn(move || rendezvous(&local(0, 3, port), b"", Duration::from_secs(20)).err().map(|e| e.to_string()));
            // A raw hello, as a process with a wrong RANK would send it.
            let mut s = raw_rank(port, claimed as usize, 3);
            let (tag, body) = read_frame(&mut s, 1 << 10).unwrap();
            assert_eq!(tag, b'E');
            let msg = String::from_utf8(body).unwrap();
            assert!(msg.contains(&format!("claims rank {claimed}, which rank 0 cannot hand out in a world of 3")), "{msg}");
            assert!(server.join().unwrap().unwrap().contains("cannot hand out"));
        }
    }

    #[test]
    fn rank_zero_hands_its_payload_to_every_rank() {
        let port = free_port();
        let hs: Vec<_> = (0..3)
            .map(|r| std::thread::spawn(move || rendezvous(&local(r, 3, port), if r == 0 { b"the id" } else { b"" }, Duration::from_secs(20)).map(|l| (l.payload, l.streams.len()))))
            .collect();
        let out: Vec<_> = hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        assert_eq!(out, vec![(b"the id".to_vec(), 2), (b"the id".to_vec(), 1), (b"the id".to_vec(), 1)]);
    }

    #[test]
    fn missing_ranks_and_absent_rank_zero_are_named_after_the_timeout() {
        let port = free_port();
        let t = Instant::now();
        let e = rendezvous(&local(0, 3, port), b"", Duration::from_millis(300)).err().unwrap().to_string();
        assert!(e.contains("rank(s) 1, 2 never connected") && e.contains(&port.to_string()), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let e = rendezvous(&local(2, 3, port), b"", Duration::from_millis(300)).err().unwrap().to_string();
        assert!(e.contains("rank 2 could not reach rank 0 at 127.0.0.1:") && e.contains("MASTER_ADDR"), "{e}");
    }

    #[test]
    fn a_rank_of_another_job_or_a_duplicate_rank_is_refused() {
        let port = free_port();
        let server = std::thread::spawn(move || rendezvous(&local(0, 3, port), b"", Duration::from_secs(20)).err().map(|e| e.to_string()));
        let a = std::thread::spawn(move || rendezvous(&local(1, 3, port), b"", Duration::from_secs(20)).map(|_| ()));
        // Let the first rank 1 register before the second arrives.
        std::thread::sleep(Duration::from_millis(400));
        let b = rendezvous(&local(1, 3, port), b"", Duration::from_secs(20)).err().unwrap().to_string();
        assert!(b.contains("rank 0 refused rank 1") && b.contains("second process claims rank 1"), "{b}");
        a.join().unwrap().ok();
        assert!(server.join().unwrap().unwrap().contains("second process claims rank 1"));
        let port = free_port();
        let server = std::thread::spawn(move || rendezvous(&local(0, 2, port), b"", Duration::from_secs(20)).err().map(|e| e.to_string()));
        let e = rendezvous(&local(1, 4, port), b"", Duration::from_secs(20)).err().unwrap().to_string();
        assert!(e.contains("job of 4 processes, this one has 2"), "{e}");
        assert!(server.join().unwrap().unwrap().contains("job of 4 processes"));
    }
}
