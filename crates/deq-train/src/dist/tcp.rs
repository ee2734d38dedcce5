//! A multi-process [`Collective`] over TCP, for CPU jobs (and any job without NCCL): the ranks
//! meet at rank 0 ([`super::rendezvous`]) and keep their connections; every collective sends
//! each rank's tensor to rank 0, which combines them exactly as the in-process
//! [`super::ThreadGroup`] does (f64, rank order) and sends the result back. A star is slower
//! than NCCL's rings, but CPU data parallelism is bound by compute, and the results are
//! bit-identical to an in-process run, which is what the tests compare against.

use super::collective::{from_parts, mismatch, pick_root, sum_in_rank_order, to_parts, Collective, Part};
use super::rendezvous::{read_frame, rendezvous, write_frame};
use super::DistContext;
use crate::error::Result;
use candle_core::{DType, Shape, Tensor};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

/// Largest message accepted from a peer (2^36 bytes: 8 G f64 values), checked before allocating.
const MAX_MESSAGE: u64 = 1 << 36;

/// One rank of a TCP process group.
pub struct TcpGroup {
    ctx: DistContext,
    /// Rank 0: the streams of ranks 1.., in order; others: the stream to rank 0.
    streams: Mutex<Vec<TcpStream>>,
}

impl std::fmt::Debug for TcpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpGroup(rank {} of {})", self.ctx.rank, self.ctx.world_size)
    }
}

impl TcpGroup {
    /// Joins the job of `ctx` (rank 0 listens on [`DistContext::id_port`], the others connect
    /// to `MASTER_ADDR`); every wait, the rendezvous's and each collective's, ends in an error
    /// after `timeout`.
    pub fn connect(ctx: DistContext, timeout: Duration) -> Result<Self> {
        let links = rendezvous(&ctx, b"", timeout)?;
        Ok(Self { ctx, streams: Mutex::new(links.streams) })
    }

    /// One round: every rank contributes `mine`; rank 0 combines the contributions in rank
    /// order and every rank returns the result (or the error rank 0 found).
    fn round(&self, mine: Part, combine: &dyn Fn(&[Option<Part>]) -> std::result::Result<Part, String>) -> Result<Part> {
        let mut streams = self.streams.lock().map_err(|_| mismatch("a thread panicked inside a collective"))?;
        let lost = |rank: usize, e: std::io::Error| mismatch(format!("collective: rank {rank} is gone or silent ({e}); every rank must call the same collectives"));
        if self.ctx.rank == 0 {
            let mut slots = vec![Some(mine)];
            for (i, s) in streams.iter_mut().enumerate() {
                let (_, body) = read_frame(s, MAX_MESSAGE).map_err(|e| lost(i + 1, e))?;
                slots.push(Some(decode(&body).map_err(|e| mismatch(format!("collective: rank {}: {e}", i + 1)))?));
            }
            match combine(&slots) {
                Ok(out) => {
                    let body = encode(&out);
                    for (i, s) in streams.iter_mut().enumerate() {
                        write_frame(s, b'P', &body).map_err(|e| lost(i + 1, e))?;
                    }
                    Ok(out)
                }
                Err(msg) => {
                    for s in streams.iter_mut() {
                        let _ = write_frame(s, b'E', msg.as_bytes());
                    }
                    Err(mismatch(msg))
                }
            }
        } else {
            let s = &mut streams[0];
            write_frame(s, b'P', &encode(&mine)).map_err(|e| lost(0, e))?;
            let (tag, body) = read_frame(s, MAX_MESSAGE).map_err(|e| lost(0, e))?;
            if tag == b'E' {
                return Err(mismatch(String::from_utf8_lossy(&body).into_owned()));
            }
            decode(&body).map_err(|e| mismatch(format!("collective: rank 0: {e}")))
        }
    }
}

/// dtype, rank, dims, then the values, all little-endian.
fn encode(p: &Part) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 8 * (p.1.rank() + p.0.len()));
    b.push(dtype_code(p.2));
    b.extend_from_slice(&(p.1.rank() as u64).to_le_bytes());
    for d in p.1.dims() {
        b.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    b.extend_from_slice(&(p.0.len() as u64).to_le_bytes());
    for v in &p.0 {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode(b: &[u8]) -> std::result::Result<Part, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> std::result::Result<&[u8], String> {
        let s = b.get(at..at + n).ok_or("truncated message")?;
        at += n;
        Ok(s)
    };
    let dtype = dtype_of(take(1)?[0])?;
    let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    let rank = u64_at(take(8)?);
    if rank > 16 {
        return Err(format!("a tensor of rank {rank}"));
    }
    let dims = (0..rank).map(|_| take(8).map(|s| u64_at(s) as usize)).collect::<std::result::Result<Vec<_>, _>>()?;
    let n = u64_at(take(8)?) as usize;
    let raw = take(n.checked_mul(8).ok_or("absurd length")?)?;
    let values = raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let shape = Shape::from(dims);
    if !(shape.elem_count() == n || n == 0) {
        return Err(format!("{n} values for shape {shape:?}"));
    }
    Ok((values, shape, dtype))
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

fn dtype_code(d: DType) -> u8 {
    DTYPES.iter().position(|x| *x == d).map_or(255, |i| i as u8)
}

fn dtype_of(c: u8) -> std::result::Result<DType, String> {
    DTYPES.get(c as usize).copied().ok_or_else(|| format!("unknown dtype code {c}"))
}

impl Collective for TcpGroup {
    fn context(&self) -> &DistContext {
        &self.ctx
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        if dtype_code(t.dtype()) == 255 {
            return Err(mismatch(format!("all_reduce: dtype {:?} is not a float type", t.dtype())));
        }
        from_parts(&self.round(to_parts(t)?, &sum_in_rank_order)?, t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.ctx.world_size {
            return Err(mismatch(format!("broadcast from rank {root} in a world of {}", self.ctx.world_size)));
        }
        let mine = if self.ctx.rank == root { to_parts(t)? } else { (Vec::new(), t.shape().clone(), t.dtype()) };
        from_parts(&self.round(mine, &|slots| pick_root(slots, root))?, t.device())
    }

    fn barrier(&self) -> Result<()> {
        self.round((Vec::new(), Shape::from(()), DType::F64), &|_| Ok((Vec::new(), Shape::from(()), DType::F64))).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::test_support::{free_port, local, raw_rank};
    use crate::dist::ThreadGroup;
    use candle_core::Device;

    /// Runs `f` on `world` TCP ranks (threads standing in for processes) and returns the
    /// results in rank order.
    fn on_tcp<R: Send + 'static>(world: usize, f: impl Fn(&dyn Collective) -> R + Send + Sync + 'static) -> Vec<R> {
        let port = free_port();
        let f = std::sync::Arc::new(f);
        let hs: Vec<_> = (0..world)
            .map(|r| {
                let f = f.clone();
                std::thread::spawn(move || f(&TcpGroup::connect(local(r, world, port), Duration::from_secs(30)).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn work(c: &dyn Collective) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
        // Values whose f32 sum depends on the order of addition.
        let r = c.context().rank;
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919 + r * 104_729) % 1000) as f32 * 1.37e-3 + 1e7 * (r as f32 - 1.0)).collect();
        let s = c.all_reduce_sum(&Tensor::from_vec(x, (10, 100), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(s.dims(), &[10, 100]);
        let b = c.broadcast(&Tensor::new(&[r as f64 + 0.5, 2.0], &Device::Cpu).unwrap(), 2).unwrap();
        c.barrier().unwrap();
        let h = c.all_reduce_sum(&Tensor::new(&[r as f32], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
        (s.flatten_all().unwrap().to_vec1().unwrap(), b.to_vec1().unwrap(), h.to_dtype(DType::F32).unwrap().to_vec1().unwrap())
    }

    #[test]
    fn tcp_ranks_agree_bit_for_bit_with_in_process_ranks() {
        let tcp = on_tcp(3, work);
        let threads: Vec<_> = ThreadGroup::new(3).into_iter().map(|g| std::thread::spawn(move || work(&g))).collect();
        let threads: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(tcp, threads);
        assert_eq!(tcp[1].1, vec![2.5, 2.0], "rank 2's value");
        assert_eq!(tcp[0].2, vec![3.0]);
    }

    #[test]
    fn ranks_that_disagree_get_an_error_not_a_hang() {
        let out = on_tcp(3, |c| {
            let n = if c.context().rank == 2 { 5 } else { 4 };
            c.all_reduce_sum(&Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()).map(|_| ()).map_err(|e| e.to_string())
        });
        for r in out {
            let e = r.unwrap_err();
            assert!(e.contains("all_reduce: rank 2 sent [5]"), "{e}");
        }
    }

    #[test]
    fn a_rank_that_leaves_is_reported_by_the_others() {
        let out = on_tcp(2, |c| {
            if c.context().rank == 1 {
                return Ok(());
            }
            c.barrier().map_err(|e| e.to_string())
        });
        let e = out[0].clone().unwrap_err();
        assert!(e.contains("rank 1 is gone or silent"), "{e}");
    }

    #[test]
    fn a_corrupt_message_is_reported_with_its_rank() {
        use crate::dist::rendezvous::write_frame;
        let port = free_port();
        let root = std::thread::spawn(move || {
            let g = TcpGroup::connect(local(0, 3, port), Duration::from_secs(30)).unwrap();
            g.barrier().unwrap_err().to_string()
        });
        let good = std::thread::spawn(move || TcpGroup::connect(local(1, 3, port), Duration::from_secs(30)).unwrap().barrier().map_err(|e| e.to_string()));
        // Rank 2 by hand: the hello, then a truncated part.
        let mut s = raw_rank(port, 2, 3);
        crate::dist::rendezvous::read_frame(&mut s, 1 << 10).unwrap();
        write_frame(&mut s, b'P', &[0, 1, 2]).unwrap();
        let e = root.join().unwrap();
        assert!(e.contains("collective: rank 2: truncated message"), "{e}");
        assert!(good.join().unwrap().is_err(), "rank 1 learns of the failure too");
    }

    #[test]
    fn messages_are_checked_before_use() {
        let good = encode(&(vec![1.0, 2.0], Shape::from((1, 2)), DType::F32));
        assert!(decode(&good).is_ok());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut lying = good.clone();
        lying[1 + 8 + 16] = 3; // three values for a shape of two
        assert!(decode(&lying).is_err());
        // Tensors of rank 16 pass, 17 do not.
        let ranked = |r: usize| encode(&(vec![1.0], Shape::from(vec![1; r]), DType::F32));
        assert!(decode(&ranked(16)).is_ok());
        assert!(decode(&ranked(17)).unwrap_err().contains("rank 17"));
        let mut huge = good.clone();
        huge[1 + 8 + 16..1 + 8 + 24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("absurd length"));
    }
}
