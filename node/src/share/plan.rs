//! Which chunk comes from which holder: the pure core of a pull. Chunks already on disk (a
//! resumed pull) and chunks not wanted (a stage fetching only its tensors) are never asked for;
//! each holder takes the next contiguous run of wanted chunks; a holder that fails gives its
//! unfinished chunks back, and one that sent a chunk that does not verify is never asked again.

use std::ops::Range;

/// One chunk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Not part of this fetch.
    Skip,
    Wanted,
    /// Asked of the holder with this index.
    Taken(usize),
    Have,
}

/// How a holder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Usable,
    /// Its stream broke or it refused: not asked again in this pull.
    Failed,
    /// It sent bytes that did not verify: not asked again for this model.
    Bad,
}

/// What one holder has done in this pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder<H> {
    pub id: H,
    /// Verified bytes received from it.
    pub bytes: u64,
    pub standing: Standing,
}

/// The state of one pull.
#[derive(Debug, Clone)]
pub struct Plan<H> {
    chunks: Vec<Chunk>,
    sizes: Sizes,
    holders: Vec<Holder<H>>,
    /// Bytes that were on disk already when the pull started.
    pub resumed: u64,
    /// Chunks wanted and not here yet; bytes here; bytes wanted.
    left: usize,
    have: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    chunk: u64,
    file: u64,
}

impl Sizes {
    fn of(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk;
        (start + self.chunk).min(self.file) - start
    }
}

impl<H: PartialEq + Clone> Plan<H> {
    /// A pull of a file of `file_size` bytes in chunks of `chunk_size`: chunk `i` is fetched
    /// when `wanted(i)` and not `have(i)`.
    pub fn new(
        file_size: u64,
        chunk_size: u32,
        wanted: impl Fn(u32) -> bool,
        have: impl Fn(u32) -> bool,
    ) -> Self {
        let sizes = Sizes {
            chunk: u64::from(chunk_size),
            file: file_size,
        };
        let n = file_size.div_ceil(sizes.chunk) as u32;
        let chunks: Vec<Chunk> = (0..n)
            .map(|i| match (wanted(i), have(i)) {
                (false, _) => Chunk::Skip,
                (true, true) => Chunk::Have,
                (true, false) => Chunk::Wanted,
            })
            .collect();
        let bytes = |state: Chunk| -> u64 {
            (0..chunks.len())
                .filter(|&i| chunks[i] == state)
                .map(|i| sizes.of(i))
                .sum()
        };
        let resumed = bytes(Chunk::Have);
        let total = resumed + bytes(Chunk::Wanted);
        Plan {
            left: chunks.iter().filter(|c| **c == Chunk::Wanted).count(),
            chunks,
            sizes,
            holders: Vec::new(),
            resumed,
            have: resumed,
            total,
        }
    }

    /// Adds a holder (again: a holder already known keeps its standing).
    pub fn add_holder(&mut self, id: H) {
        if !self.holders.iter().any(|h| h.id == id) {
            self.holders.push(Holder {
                id,
                bytes: 0,
                standing: Standing::Usable,
            });
        }
    }

    fn holder(&self, id: &H) -> Option<usize> {
        self.holders.iter().position(|h| h.id == *id)
    }

    /// Whether `id` may be asked for chunks.
    pub fn usable(&self, id: &H) -> bool {
        self.holder(id)
            .is_some_and(|h| self.holders[h].standing == Standing::Usable)
    }

    /// Holders that may still be asked.
    pub fn usable_holders(&self) -> usize {
        self.holders
            .iter()
            .filter(|h| h.standing == Standing::Usable)
            .count()
    }

    /// Every holder and what it sent.
    pub fn holders(&self) -> &[Holder<H>] {
        &self.holders
    }

    /// The next run of at most `max` wanted chunks for holder `id` (now taken by it); `None` when
    /// nothing is left to ask or the holder may not be asked.
    pub fn next_batch(&mut self, id: &H, max: u32) -> Option<Range<u32>> {
        let h = self.holder(id)?;
        if self.holders[h].standing != Standing::Usable {
            return None;
        }
        let first = self.chunks.iter().position(|c| *c == Chunk::Wanted)?;
        let mut end = first;
        while end < self.chunks.len()
            && self.chunks[end] == Chunk::Wanted
            && end - first < max as usize
        {
            self.chunks[end] = Chunk::Taken(h);
            end += 1;
        }
        Some(first as u32..end as u32)
    }

    /// Chunk `index` arrived from `id` and verified. Returns false for a chunk that was not
    /// asked of that holder (it is ignored).
    pub fn got(&mut self, id: &H, index: u32) -> bool {
        let Some(h) = self.holder(id) else {
            return false;
        };
        match self.chunks.get(index as usize) {
            Some(Chunk::Taken(t)) if *t == h => {
                let n = self.sizes.of(index as usize);
                self.chunks[index as usize] = Chunk::Have;
                self.holders[h].bytes += n;
                self.have += n;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Holder `id` sent a chunk that did not verify: it is not asked again, and what it had
    /// taken is wanted again.
    pub fn bad(&mut self, id: &H) {
        self.drop_holder(id, Standing::Bad);
    }

    /// Holder `id` failed (its stream broke, it refused): what it had taken is wanted again.
    pub fn failed(&mut self, id: &H) {
        self.drop_holder(id, Standing::Failed);
    }

    fn drop_holder(&mut self, id: &H, standing: Standing) {
        let Some(h) = self.holder(id) else { return };
        if self.holders[h].standing != Standing::Bad {
            self.holders[h].standing = standing;
        }
        self.give_back(h, 0..self.chunks.len());
    }

    /// Lets holder `id`, which failed, be asked again (it is still there, and no other holder
    /// is); one that sent bad bytes stays out. Returns whether it changed.
    pub fn revive(&mut self, id: &H) -> bool {
        match self.holder(id) {
            Some(h) if self.holders[h].standing == Standing::Failed => {
                self.holders[h].standing = Standing::Usable;
                true
            }
            _ => false,
        }
    }

    /// Chunks of `batch` that holder `id` did not deliver (its answer ended early) are wanted
    /// again; the holder stays usable, and its other batches stay its own.
    pub fn release(&mut self, id: &H, batch: Range<u32>) {
        if let Some(h) = self.holder(id) {
            let end = (batch.end as usize).min(self.chunks.len());
            self.give_back(h, batch.start as usize..end);
        }
    }

    fn give_back(&mut self, h: usize, range: Range<usize>) {
        for c in &mut self.chunks[range] {
            if *c == Chunk::Taken(h) {
                *c = Chunk::Wanted;
            }
        }
    }

    /// Whether chunk `index` is here.
    pub fn has(&self, index: u32) -> bool {
        self.chunks.get(index as usize) == Some(&Chunk::Have)
    }

    /// Whether every wanted chunk is here.
    pub fn done(&self) -> bool {
        self.left == 0
    }

    /// Whether some chunk waits for a holder to take it.
    pub fn waiting(&self) -> bool {
        self.chunks.contains(&Chunk::Wanted)
    }

    /// (bytes here, bytes wanted in all), resumed bytes included.
    pub fn progress(&self) -> (u64, u64) {
        (self.have, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chunks: u32) -> Plan<&'static str> {
        Plan::new(u64::from(chunks) * 10 - 3, 10, |_| true, |_| false)
    }

    #[test]
    fn holders_take_runs_in_turn_until_everything_is_here() {
        let mut p = plan(10);
        p.add_holder("a");
        p.add_holder("b");
        assert_eq!(p.next_batch(&"a", 4), Some(0..4));
        assert_eq!(p.next_batch(&"b", 4), Some(4..8));
        assert_eq!(p.next_batch(&"a", 4), Some(8..10));
        assert_eq!(p.next_batch(&"b", 4), None);
        for i in 0..10 {
            let h = if (4..8).contains(&i) { "b" } else { "a" };
            assert!(p.got(&h, i));
        }
        assert!(p.done());
        assert_eq!(p.progress(), (97, 97));
        assert_eq!(p.holders()[0].bytes, 57);
        assert_eq!(p.holders()[1].bytes, 40);
    }

    #[test]
    fn a_failed_holder_gives_back_only_what_it_did_not_deliver() {
        let mut p = plan(8);
        p.add_holder("a");
        p.add_holder("b");
        assert_eq!(p.next_batch(&"a", 4), Some(0..4));
        assert!(p.got(&"a", 0));
        assert!(p.got(&"a", 1));
        p.failed(&"a");
        assert!(!p.usable(&"a"));
        assert_eq!(p.next_batch(&"a", 4), None);
        assert!(p.revive(&"a") && p.usable(&"a"));
        p.failed(&"a");
        assert_eq!(p.next_batch(&"b", 8), Some(2..8));
        // A late chunk from the failed holder is not counted.
        assert!(!p.got(&"a", 2));
        for i in 2..8 {
            assert!(p.got(&"b", i));
        }
        assert!(p.done());
        assert_eq!(p.holders()[0].bytes, 20);
    }

    #[test]
    fn a_bad_holder_stays_bad_and_its_chunks_go_to_another() {
        let mut p = plan(4);
        p.add_holder("a");
        p.add_holder("b");
        assert_eq!(p.next_batch(&"a", 4), Some(0..4));
        assert!(p.got(&"a", 0));
        p.bad(&"a");
        p.failed(&"a");
        p.add_holder("a");
        assert!(!p.revive(&"a"));
        assert_eq!(p.holders()[0].standing, Standing::Bad);
        assert_eq!(p.usable_holders(), 1);
        assert_eq!(p.next_batch(&"b", 4), Some(1..4));
    }

    #[test]
    fn resumed_and_unwanted_chunks_are_never_asked_for() {
        let mut p: Plan<&str> = Plan::new(100, 10, |i| i < 8, |i| i % 2 == 0);
        assert_eq!(p.resumed, 40);
        assert_eq!(p.progress(), (40, 80));
        p.add_holder("a");
        assert_eq!(p.next_batch(&"a", 10), Some(1..2));
        assert_eq!(p.next_batch(&"a", 10), Some(3..4));
        // Giving back one batch leaves the holder's other batch alone.
        p.release(&"a", 1..2);
        assert!(p.usable(&"a"));
        assert_eq!(p.next_batch(&"a", 10), Some(1..2));
        assert!(p.waiting());
        for i in [5, 7] {
            assert_eq!(p.next_batch(&"a", 10), Some(i..i + 1));
        }
        assert!(!p.waiting());
        assert!(!p.done());
        for i in [1, 3, 5, 7] {
            assert!(p.got(&"a", i));
        }
        assert!(p.done());
    }
}
