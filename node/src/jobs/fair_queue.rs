//! A bounded queue that takes turns between requesters, so one busy device cannot starve the
//! others: each requester has its own line, and lines are served round-robin.

use std::collections::VecDeque;

/// Jobs waiting for a slot, grouped by who asked.
#[derive(Debug)]
pub struct FairQueue<T> {
    lines: VecDeque<(String, VecDeque<T>)>,
    len: usize,
    capacity: usize,
}

impl<T> FairQueue<T> {
    /// A queue holding at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        FairQueue {
            lines: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues `job` for `requester`; gives it back when the queue is full.
    pub fn push(&mut self, requester: &str, job: T) -> Result<(), T> {
        if self.len >= self.capacity {
            return Err(job);
        }
        match self.lines.iter_mut().find(|(r, _)| r == requester) {
            Some((_, line)) => line.push_back(job),
            None => self
                .lines
                .push_back((requester.to_owned(), VecDeque::from([job]))),
        }
        self.len += 1;
        Ok(())
    }

    /// The next job: the head of the line whose turn it is.
    pub fn pop(&mut self) -> Option<(String, T)> {
        let (requester, mut line) = self.lines.pop_front()?;
        let job = line.pop_front().expect("lines are never empty");
        self.len -= 1;
        if !line.is_empty() {
            self.lines.push_back((requester.clone(), line));
        }
        Some((requester, job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requesters_take_turns_and_each_keeps_its_order() {
        let mut q = FairQueue::new(10);
        for i in 0..4 {
            q.push("laptop", format!("l{i}")).unwrap();
        }
        q.push("phone", "p0".to_owned()).unwrap();
        q.push("phone", "p1".to_owned()).unwrap();
        q.push("tv", "t0".to_owned()).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|(_, j)| j)).collect();
        assert_eq!(order, ["l0", "p0", "t0", "l1", "p1", "l2", "l3"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_full_queue_refuses_rather_than_grows() {
        let mut q = FairQueue::new(2);
        q.push("a", 1).unwrap();
        q.push("b", 2).unwrap();
        assert_eq!(q.push("c", 3), Err(3));
        assert_eq!(q.len(), 2);
        q.pop();
        assert!(q.push("c", 3).is_ok());
    }
}
