//! The usernames of a file, in bounded memory whatever its size: one 64-bit hash per name,
//! collected in a fixed buffer that is sorted and spilled to a temporary file when full (an
//! external sort), then read back as one sorted stream by merging the runs. From that stream come
//! the names that appear more than once (the duplicate check) and, for full sync, which managed
//! users the file does not name. Memory: the buffer ([`RUN_LEN`] hashes, 2 MiB) plus one 64 KiB
//! reader per run while merging, plus the duplicated names themselves (8 bytes each).
//!
//! A hash collision (odds about n²/2⁶⁵: 1e-7 at two million names) can only flag two rows as
//! duplicates, or keep a managed user from being deactivated: both err on the side of writing
//! nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Seek, Write};

/// Hashes per in-memory run: 256 Ki × 8 bytes = 2 MiB.
pub const RUN_LEN: usize = 256 * 1024;

/// The hash a name is known by: case-insensitive, as the platform compares usernames.
pub fn key_hash(username: &str) -> u64 {
    // DefaultHasher with fixed keys: stable within a process, which is all that is needed.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    username.to_lowercase().hash(&mut h);
    h.finish()
}

/// Names pushed one by one; sorted runs spilled to disk past [`RUN_LEN`].
#[derive(Debug)]
pub struct NameSpill {
    buf: Vec<u64>,
    runs: Vec<std::fs::File>,
    run_len: usize,
    pushed: u64,
}

impl Default for NameSpill {
    fn default() -> Self {
        Self::with_run_len(RUN_LEN)
    }
}

impl NameSpill {
    /// A spill with runs of `run_len` hashes (small in tests, to exercise the merge).
    pub fn with_run_len(run_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            runs: Vec::new(),
            run_len: run_len.max(1),
            pushed: 0,
        }
    }

    pub fn push(&mut self, hash: u64) -> std::io::Result<()> {
        if self.buf.len() >= self.run_len {
            self.spill()?;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.run_len);
        }
        self.buf.push(hash);
        self.pushed += 1;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.pushed
    }

    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    fn spill(&mut self) -> std::io::Result<()> {
        self.buf.sort_unstable();
        let mut f = tempfile::tempfile()?;
        {
            let mut w = BufWriter::with_capacity(64 * 1024, &mut f);
            for h in &self.buf {
                w.write_all(&h.to_le_bytes())?;
            }
            w.flush()?;
        }
        self.runs.push(f);
        self.buf.clear();
        Ok(())
    }

    /// Every pushed hash, in ascending order (repeats kept).
    pub fn sorted(mut self) -> std::io::Result<Sorted> {
        if !self.runs.is_empty() && !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf.sort_unstable();
        let mut readers = Vec::with_capacity(self.runs.len());
        for mut f in self.runs {
            f.rewind()?;
            readers.push(BufReader::with_capacity(64 * 1024, f));
        }
        let mut s = Sorted {
            memory: std::mem::take(&mut self.buf).into_iter(),
            readers,
            heap: BinaryHeap::new(),
        };
        for i in 0..s.readers.len() {
            if let Some(h) = read_u64(&mut s.readers[i])? {
                s.heap.push(Reverse((h, i)));
            }
        }
        Ok(s)
    }

    /// The hashes pushed more than once (sorted, each once) and how many pushes they account
    /// for.
    pub fn duplicates(self) -> std::io::Result<(Vec<u64>, u64)> {
        let mut dups = Vec::new();
        let mut occurrences = 0u64;
        let mut sorted = self.sorted()?;
        let mut last: Option<(u64, u64)> = None;
        let mut close = |last: Option<(u64, u64)>| {
            if let Some((h, n)) = last
                && n > 1
            {
                dups.push(h);
                occurrences += n;
            }
        };
        while let Some(h) = sorted.next_hash()? {
            match &mut last {
                Some((l, n)) if *l == h => *n += 1,
                _ => {
                    close(last);
                    last = Some((h, 1));
                }
            }
        }
        close(last);
        Ok((dups, occurrences))
    }
}

/// The merged, sorted stream of a [`NameSpill`].
#[derive(Debug)]
pub struct Sorted {
    memory: std::vec::IntoIter<u64>,
    readers: Vec<BufReader<std::fs::File>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
}

impl Sorted {
    pub fn next_hash(&mut self) -> std::io::Result<Option<u64>> {
        if self.readers.is_empty() {
            return Ok(self.memory.next());
        }
        let Some(Reverse((h, i))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(next) = read_u64(&mut self.readers[i])? {
            self.heap.push(Reverse((next, i)));
        }
        Ok(Some(h))
    }

    /// Of `candidates` (name, hash), those whose hash is not in the stream, in hash order.
    pub fn absent(mut self, mut candidates: Vec<(u64, String)>) -> std::io::Result<Vec<String>> {
        candidates.sort_unstable();
        let mut out = Vec::new();
        let mut cur = self.next_hash()?;
        for (h, name) in candidates {
            while cur.is_some_and(|c| c < h) {
                cur = self.next_hash()?;
            }
            if cur != Some(h) {
                out.push(name);
            }
        }
        Ok(out)
    }
}

fn read_u64(r: &mut impl Read) -> std::io::Result<Option<u64>> {
    let mut b = [0u8; 8];
    match r.read_exact(&mut b) {
        Ok(()) => Ok(Some(u64::from_le_bytes(b))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Rows naming two users (a rename): both hashes, kept on disk so the rows affected by
/// duplicates can be counted exactly (a row whose two names are both duplicated counts once).
#[derive(Debug, Default)]
pub struct PairSpill {
    file: Option<BufWriter<std::fs::File>>,
}

impl PairSpill {
    pub fn push(&mut self, a: u64, b: u64) -> std::io::Result<()> {
        let w = match &mut self.file {
            Some(w) => w,
            None => self
                .file
                .insert(BufWriter::with_capacity(64 * 1024, tempfile::tempfile()?)),
        };
        w.write_all(&a.to_le_bytes())?;
        w.write_all(&b.to_le_bytes())
    }

    /// Pairs whose two hashes are both in `dups` (sorted).
    pub fn both_in(self, dups: &[u64]) -> std::io::Result<u64> {
        let Some(w) = self.file else { return Ok(0) };
        if dups.is_empty() {
            return Ok(0);
        }
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        let mut r = BufReader::with_capacity(64 * 1024, f);
        let mut n = 0;
        while let (Some(a), Some(b)) = (read_u64(&mut r)?, read_u64(&mut r)?) {
            if dups.binary_search(&a).is_ok() && dups.binary_search(&b).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(hashes: &[u64], run_len: usize) -> NameSpill {
        let mut s = NameSpill::with_run_len(run_len);
        for &h in hashes {
            s.push(h).unwrap_or_else(|e| panic!("{e}"));
        }
        s
    }

    #[test]
    fn duplicates_are_found_across_spilled_runs() -> std::io::Result<()> {
        let hashes: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 600).collect();
        for run_len in [1, 3, 64, 10_000] {
            let (dups, occ) = spill(&hashes, run_len).duplicates()?;
            let mut counts = std::collections::BTreeMap::new();
            for h in &hashes {
                *counts.entry(*h).or_insert(0u64) += 1;
            }
            let want: Vec<u64> = counts
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(h, _)| *h)
                .collect();
            let want_occ: u64 = counts.values().filter(|n| **n > 1).sum();
            assert_eq!((dups, occ), (want, want_occ), "run_len {run_len}");
        }
        Ok(())
    }

    #[test]
    fn absent_names_are_those_the_stream_lacks() -> std::io::Result<()> {
        let s = spill(&[5, 1, 9, 3, 9], 2);
        let absent = s.sorted()?.absent(vec![
            (9, "nine".into()),
            (2, "two".into()),
            (1, "one".into()),
            (10, "ten".into()),
        ])?;
        assert_eq!(absent, vec!["two".to_string(), "ten".to_string()]);
        Ok(())
    }

    #[test]
    fn pairs_count_when_both_names_are_duplicated() -> std::io::Result<()> {
        let mut p = PairSpill::default();
        p.push(1, 2)?;
        p.push(1, 3)?;
        p.push(4, 2)?;
        assert_eq!(p.both_in(&[1, 2])?, 1);
        Ok(())
    }

    #[test]
    fn the_hash_ignores_case() {
        assert_eq!(key_hash("Ada"), key_hash("ada"));
        assert_ne!(key_hash("ada"), key_hash("alan"));
    }
}
