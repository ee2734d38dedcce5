//! An in-process [`Collective`]: `world_size` threads of one process, each holding one rank.
//! It runs the same trainer code as a multi-process job, so `cargo test` can check that a
//! world-N run equals a world-1 run on the same global batch.

use super::collective::{from_parts, mismatch, pick_root, sum_in_rank_order, to_parts, Collective, Part};
use super::DistContext;
use crate::error::Result;
use candle_core::{DType, Shape, Tensor};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a rank waits for the others before giving up (a rank that died or diverged in
/// its sequence of collectives).
const TIMEOUT: Duration = Duration::from_secs(600);

/// How the last rank of a round combines the contributions (in rank order).
type Combine<'a> = &'a dyn Fn(&[Option<Part>]) -> std::result::Result<Part, String>;

#[derive(Default)]
struct Round {
    /// Completed rounds.
    generation: u64,
    /// Each rank's contribution to the current round.
    slots: Vec<Option<Part>>,
    /// The result of the last completed round, per rank (all equal except for broadcasts'
    /// shapes, which are the root's).
    result: Option<Arc<Part>>,
    /// Set when a round failed (ranks disagreed): every waiting rank returns the error.
    failed: Option<String>,
}

struct Shared {
    round: Mutex<Round>,
    done: Condvar,
}

/// One rank of an in-process group.
pub struct ThreadGroup {
    ctx: DistContext,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThreadGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadGroup(rank {} of {})", self.ctx.rank, self.ctx.world_size)
    }
}

impl ThreadGroup {
    /// The `world` ranks of a new group; hand one to each thread.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let world = world.max(1);
        let shared = Arc::new(Shared { round: Mutex::new(Round { slots: vec![None; world], ..Default::default() }), done: Condvar::new() });
        (0..world)
            .map(|rank| ThreadGroup { ctx: DistContext { rank, world_size: world, local_rank: rank, local_world_size: world, ..Default::default() }, shared: shared.clone() })
            .collect()
    }

    /// Contributes `mine` to a round and returns the round's result, computed by the last rank
    /// to arrive with `combine` over the contributions in rank order.
    fn round(&self, mine: Option<Part>, combine: Combine<'_>) -> Result<Arc<Part>> {
        let s = &*self.shared;
        let mut r = s.round.lock().map_err(|_| mismatch("a rank panicked inside a collective"))?;
        if let Some(e) = &r.failed {
            return Err(mismatch(e.clone()));
        }
        // A rank may arrive for round g+1 before slower ranks have left round g: its slot is
        // free again as soon as round g completed.
        while r.slots[self.ctx.rank].is_some() {
            r = s.done.wait_timeout(r, TIMEOUT).map_err(|_| mismatch("a rank panicked inside a collective"))?.0;
        }
        let generation = r.generation;
        r.slots[self.ctx.rank] = Some(mine.unwrap_or_else(|| (Vec::new(), Shape::from(()), DType::F64)));
        if r.slots.iter().all(Option::is_some) {
            match combine(&r.slots) {
                Ok(out) => r.result = Some(Arc::new(out)),
                Err(e) => r.failed = Some(e),
            }
            r.slots.iter_mut().for_each(|x| *x = None);
            r.generation += 1;
            s.done.notify_all();
        } else {
            while r.generation == generation && r.failed.is_none() {
                let (next, timeout) = s.done.wait_timeout(r, TIMEOUT).map_err(|_| mismatch("a rank panicked inside a collective"))?;
                r = next;
                if timeout.timed_out() && r.generation == generation {
                    return Err(mismatch(format!("rank {} waited {} s for the other ranks", self.ctx.rank, TIMEOUT.as_secs())));
                }
            }
        }
        if let Some(e) = &r.failed {
            return Err(mismatch(e.clone()));
        }
        Ok(r.result.clone().expect("a completed round has a result"))
    }
}

impl Collective for ThreadGroup {
    fn context(&self) -> &DistContext {
        &self.ctx
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let out = self.round(Some(to_parts(t)?), &|slots| sum_in_rank_order(slots))?;
        from_parts(&out, t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.ctx.world_size {
            return Err(mismatch(format!("broadcast from rank {root} in a world of {}", self.ctx.world_size)));
        }
        let mine = if self.ctx.rank == root { Some(to_parts(t)?) } else { Some((Vec::new(), t.shape().clone(), t.dtype())) };
        let out = self.round(mine, &|slots| pick_root(slots, root))?;
        from_parts(&out, t.device())
    }

    fn barrier(&self) -> Result<()> {
        self.round(None, &|_| Ok((Vec::new(), Shape::from(()), DType::F64))).map(|_| ())
    }
}
