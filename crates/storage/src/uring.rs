//! Batches of reads and writes through one io_uring: a batch costs one system call to submit
//! and wait for, instead of one per transfer, and its transfers are in flight together, so a
//! disk that can serve several requests at once (an NVMe queue, a file system on one) does.
//!
//! The ring is made on first use. Where io_uring is unavailable (an old kernel, a seccomp
//! filter, `kernel.io_uring_disabled`) the caller is told so and moves the data itself.

use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

/// Submission queue entries: transfers in flight at once at most; a larger batch goes in
/// chunks of this many.
const ENTRIES: u32 = 64;

/// One vectored read or write. The iovecs must stay valid, and the memory they describe
/// untouched by anyone else, until [`Ring::run`] returns.
#[derive(Debug)]
pub(crate) struct Job {
    pub fd: RawFd,
    pub iovecs: Vec<libc::iovec>,
    pub offset: u64,
    pub write: bool,
}

/// What became of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Bytes moved (possibly fewer than asked).
    Moved(usize),
    /// The kernel's error number.
    Failed(i32),
    /// Not run (the ring stopped working): the caller moves the data itself.
    NotRun,
}

#[derive(Default)]
enum State {
    #[default]
    Untried,
    Ready(Box<IoUring>),
    Unavailable,
}

#[derive(Default)]
pub(crate) struct Ring {
    state: Mutex<State>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match *self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Untried => "untried",
            State::Ready(_) => "ready",
            State::Unavailable => "unavailable",
        };
        f.debug_struct("Ring").field("state", &state).finish()
    }
}

impl Ring {
    /// Runs `jobs`, up to [`ENTRIES`] of them in flight at once, and returns their outcomes in
    /// order; `None` when this host offers no io_uring. It returns only once the kernel is
    /// done with every job it was given, whatever happened.
    pub fn run(&self, jobs: &[Job]) -> Option<Vec<Outcome>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Untried = *state {
            *state = match IoUring::new(ENTRIES) {
                Ok(ring) => State::Ready(Box::new(ring)),
                Err(e) => {
                    tracing::info!(
                        "io_uring is unavailable ({e}): block I/O goes one request at a time"
                    );
                    State::Unavailable
                }
            };
        }
        let State::Ready(ring) = &mut *state else {
            return None;
        };
        let mut out = vec![Outcome::NotRun; jobs.len()];
        let mut usable = true;
        for (c, chunk) in jobs.chunks(ENTRIES as usize).enumerate() {
            if !usable {
                break;
            }
            usable = run_chunk(ring, chunk, c * ENTRIES as usize, &mut out);
        }
        if !usable {
            *state = State::Unavailable;
        }
        Some(out)
    }
}

/// Runs one chunk (at most a ring's worth) of jobs whose outcomes go to `out[base..]`. False
/// when the ring failed and should not be used again (nothing of it is then in flight).
fn run_chunk(ring: &mut IoUring, chunk: &[Job], base: usize, out: &mut [Outcome]) -> bool {
    let mut pushed = 0;
    {
        let mut sq = ring.submission();
        for (k, job) in chunk.iter().enumerate() {
            let fd = types::Fd(job.fd);
            let (ptr, n) = (job.iovecs.as_ptr(), job.iovecs.len() as u32);
            let entry = match job.write {
                true => opcode::Writev::new(fd, ptr, n).offset(job.offset).build(),
                false => opcode::Readv::new(fd, ptr, n).offset(job.offset).build(),
            };
            // SAFETY: the iovecs, and the memory they point at, outlive the job: this function
            // does not return before every entry pushed here has completed.
            if unsafe { sq.push(&entry.user_data((base + k) as u64)) }.is_err() {
                break; // Full (it never is: a chunk fits an empty ring): the rest is not run.
            }
            pushed += 1;
        }
    }
    let mut completed = 0;
    let mut warned = false;
    while completed < pushed {
        if let Err(e) = ring.submit_and_wait(pushed - completed) {
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            );
            let submitted = pushed - ring.submission().len();
            if !transient && submitted == completed {
                // Nothing in flight: give up on the ring. What was not submitted is not run.
                tracing::warn!("io_uring failed ({e}): block I/O goes one request at a time");
                return false;
            }
            if !transient && !warned {
                tracing::warn!("io_uring: waiting for transfers in flight failed ({e}); retrying");
                warned = true;
            }
            // Transfers are in flight into memory we lent: wait for them, however long.
            std::thread::sleep(Duration::from_micros(if transient { 0 } else { 1000 }));
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            if let Some(o) = out.get_mut(i) {
                *o = match cqe.result() {
                    n if n >= 0 => Outcome::Moved(n as usize),
                    e => Outcome::Failed(-e),
                };
            }
            completed += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn a_batch_larger_than_the_ring_reads_and_writes_every_job() {
        let mut f = tempfile::tempfile().unwrap();
        let n = ENTRIES as usize * 2 + 3;
        f.write_all(&vec![0u8; n * 512]).unwrap();
        let ring = Ring::default();
        let mut data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 512]).collect();
        let jobs: Vec<Job> = data
            .iter_mut()
            .enumerate()
            .map(|(i, d)| Job {
                fd: f.as_raw_fd(),
                iovecs: vec![iov(d)],
                offset: (i * 512) as u64,
                write: true,
            })
            .collect();
        let Some(out) = ring.run(&jobs) else {
            panic!("io_uring is unavailable on this host");
        };
        assert!(out.iter().all(|o| *o == Outcome::Moved(512)), "{out:?}");
        let mut all = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut all).unwrap();
        for i in 0..n {
            assert!(all[i * 512..(i + 1) * 512].iter().all(|b| *b == i as u8));
        }

        // Two halves of each sector read back in one job, past the end: a short read.
        let mut halves: Vec<[u8; 256]> = vec![[0; 256]; 2 * n];
        let (a, b) = halves.split_at_mut(n);
        let mut jobs: Vec<Job> = a
            .iter_mut()
            .zip(b.iter_mut())
            .enumerate()
            .map(|(i, (x, y))| Job {
                fd: f.as_raw_fd(),
                iovecs: vec![iov(x), iov(y)],
                offset: (i * 512) as u64,
                write: false,
            })
            .collect();
        jobs[n - 1].offset = (n * 512 - 100) as u64;
        let out = ring.run(&jobs).unwrap();
        assert_eq!(out[n - 1], Outcome::Moved(100));
        assert!(out[..n - 1].iter().all(|o| *o == Outcome::Moved(512)));
        assert!(a[..n - 1]
            .iter()
            .enumerate()
            .all(|(i, h)| h.iter().all(|v| *v == i as u8)));
        assert!(b[..n - 1]
            .iter()
            .enumerate()
            .all(|(i, h)| h.iter().all(|v| *v == i as u8)));
    }

    #[test]
    fn a_bad_descriptor_fails_its_job_only() {
        let f = tempfile::tempfile().unwrap();
        let ring = Ring::default();
        let mut buf = [7u8; 16];
        let mut other = [1u8; 8];
        let jobs = [
            Job {
                fd: -1,
                iovecs: vec![iov(&mut buf)],
                offset: 0,
                write: true,
            },
            Job {
                fd: f.as_raw_fd(),
                iovecs: vec![iov(&mut other)],
                offset: 0,
                write: true,
            },
        ];
        let out = ring.run(&jobs).unwrap();
        assert_eq!(out, [Outcome::Failed(libc::EBADF), Outcome::Moved(8)]);
    }
}
