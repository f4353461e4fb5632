//! The TCP engine: a [`Communicator`] over plain sockets between the ranks, what gloo is to torch —
//! data-parallel training on CPU machines that have no MPI, started by torchrun, `srun` or `lora
//! launch`. It is also the rendezvous that hands NCCL its unique id.
//!
//! Rendezvous: rank 0 listens at `MASTER_ADDR:MASTER_PORT`; every other rank connects (retrying until
//! rank 0 is up), opens a listener of its own on the address it reached rank 0 from, and says hello
//! (a magic word, its rank, the world size, its listener's port). Once every rank has arrived, rank 0
//! sends each the table of listeners and every pair of ranks gets one connection (the higher rank
//! connects). Messages on a connection are frames of a byte count and the bytes. Every read and write
//! has the run's timeout, so a peer that never arrives or stops answering is an error, and one that
//! dies closes its sockets: an error at once.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::comm::{CommError, Communicator};

/// The first bytes of every hello: not lora's, not this protocol's, not this run's.
const MAGIC: &[u8; 8] = b"lora-dp1";
/// Values per write: large gradients go out in pieces instead of as one copy in bytes.
const CHUNK: usize = 1 << 18;

/// One rank's connections to every other rank.
#[derive(Debug)]
pub struct TcpComm {
    rank: usize,
    world: usize,
    /// To each rank (`None` for itself).
    peers: Vec<Option<TcpStream>>,
    timeout: Duration,
}

fn setup(m: impl Into<String>) -> CommError {
    CommError::Setup(m.into())
}

/// The addresses `host:port` names.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, CommError> {
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| setup(format!("cannot resolve MASTER_ADDR {host}: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(setup(format!("MASTER_ADDR {host} names no address")));
    }
    Ok(addrs)
}

/// Rank 0's listener for `MASTER_ADDR:MASTER_PORT`: on the loopback address when the master is this
/// machine's loopback (nothing outside can connect), on every interface otherwise.
pub fn listen(host: &str, port: u16) -> Result<TcpListener, CommError> {
    let addrs = resolve(host, port)?;
    let at = match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(a) => *a,
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    };
    TcpListener::bind(at).map_err(|e| setup(format!("rank 0 cannot listen on {at} (MASTER_ADDR:MASTER_PORT): {e}")))
}

fn hello(rank: usize, world: usize, port: u16) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((rank as u32).to_le_bytes());
    h.extend((world as u32).to_le_bytes());
    h.extend(port.to_le_bytes());
    h
}

/// Reads a hello: (rank, world, port), or `None` when the bytes are not lora's.
fn read_hello(s: &mut TcpStream) -> io::Result<Option<(usize, usize, u16)>> {
    let mut h = [0u8; 18];
    s.read_exact(&mut h)?;
    if &h[..8] != MAGIC {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes")) as usize;
    Ok(Some((word(8), word(12), u16::from_le_bytes([h[16], h[17]]))))
}

/// Accepts one connection before `deadline` (`None` once it has passed).
fn accept_until(listener: &TcpListener, deadline: Instant) -> io::Result<Option<TcpStream>> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `addrs` before `deadline`, retrying while nothing listens yet.
fn connect_until(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    loop {
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(1)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() > deadline {
            return Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::TimedOut)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    let mut bytes = vec![0u8; u64::from_le_bytes(n) as usize];
    s.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl TcpComm {
    /// Joins the run of `world` ranks whose rank 0 listens at `master` (`host`, `port`): rank 0 passes
    /// its listener (see [`listen`]; the tests bind port 0), the others `None`. Every wait is at most
    /// `timeout`.
    pub fn join(
        rank: usize,
        world: usize,
        master: (&str, u16),
        listener: Option<TcpListener>,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let deadline = Instant::now() + timeout;
        let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        let secs = timeout.as_secs();
        if rank == 0 {
            let listener = match listener {
                Some(l) => l,
                None => listen(master.0, master.1)?,
            };
            let mut table = vec![String::new(); world];
            let mut arrived = 1;
            while arrived < world {
                let Some(mut s) = accept_until(&listener, deadline).map_err(|e| setup(e.to_string()))? else {
                    let missing: Vec<usize> = (1..world).filter(|&r| peers[r].is_none()).collect();
                    return Err(setup(format!(
                        "ranks {missing:?} did not arrive at {}:{} within {secs} s",
                        master.0, master.1
                    )));
                };
                s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| setup(e.to_string()))?;
                // Something that is not a rank of a lora run (a port scan, another program): ignored.
                let Ok(Some((r, w, port))) = read_hello(&mut s) else { continue };
                if w != world {
                    return Err(setup(format!("rank {r} was started for {w} ranks, rank 0 for {world}")));
                }
                if r == 0 || r >= world || peers[r].is_some() {
                    return Err(setup(format!(
                        "two processes of this run claim rank {r} (or it is not a rank of {world})"
                    )));
                }
                let ip = s.peer_addr().map_err(|e| setup(e.to_string()))?.ip();
                table[r] = SocketAddr::new(ip, port).to_string();
                peers[r] = Some(s);
                arrived += 1;
            }
            let table = table.join("\n");
            for s in peers.iter_mut().flatten() {
                write_frame(s, table.as_bytes()).map_err(|e| setup(e.to_string()))?;
            }
        } else {
            let addrs = resolve(master.0, master.1)?;
            let mut s = connect_until(&addrs, deadline).map_err(|e| {
                setup(format!("rank {rank} could not reach rank 0 at {}:{} within {secs} s: {e}", master.0, master.1))
            })?;
            let own = s.local_addr().map_err(|e| setup(e.to_string()))?.ip();
            let listener = TcpListener::bind((own, 0)).map_err(|e| setup(format!("rank {rank} cannot listen: {e}")))?;
            let port = listener.local_addr().map_err(|e| setup(e.to_string()))?.port();
            s.write_all(&hello(rank, world, port)).map_err(|e| setup(e.to_string()))?;
            s.set_read_timeout(Some(timeout)).map_err(|e| setup(e.to_string()))?;
            let table = read_frame(&mut s)
                .map_err(|e| setup(format!("rank 0 sent no table of the ranks within {secs} s: {e}")))?;
            let table: Vec<SocketAddr> = String::from_utf8_lossy(&table)
                .split('\n')
                .skip(1)
                .map(|a| a.parse().map_err(|_| setup(format!("rank 0 sent a malformed address {a}"))))
                .collect::<Result<_, _>>()?;
            peers[0] = Some(s);
            // The lower ranks' listeners, then this rank's own for the higher ones.
            for lower in 1..rank {
                let mut c = connect_until(&[table[lower - 1]], deadline)
                    .map_err(|e| setup(format!("rank {rank} cannot reach rank {lower}: {e}")))?;
                c.write_all(&hello(rank, world, 0)).map_err(|e| setup(e.to_string()))?;
                peers[lower] = Some(c);
            }
            for _ in rank + 1..world {
                let Some(mut c) = accept_until(&listener, deadline).map_err(|e| setup(e.to_string()))? else {
                    return Err(setup(format!("the ranks above {rank} did not connect within {secs} s")));
                };
                c.set_read_timeout(Some(timeout)).map_err(|e| setup(e.to_string()))?;
                match read_hello(&mut c) {
                    Ok(Some((r, w, _))) if w == world && r > rank && r < world && peers[r].is_none() => {
                        peers[r] = Some(c)
                    }
                    _ => return Err(setup(format!("rank {rank} got a connection that is not a rank of this run"))),
                }
            }
        }
        for s in peers.iter().flatten() {
            s.set_nodelay(true)
                .and_then(|()| s.set_read_timeout(Some(timeout)))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| setup(e.to_string()))?;
        }
        Ok(Self { rank, world, peers, timeout })
    }

    fn stream(&mut self, peer: usize) -> &mut TcpStream {
        self.peers[peer].as_mut().expect("a connection to every other rank")
    }

    fn io(&self, peer: usize, e: io::Error) -> CommError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                CommError::Timeout { rank: self.rank, peer, seconds: self.timeout.as_secs() }
            }
            _ => CommError::PeerGone { rank: self.rank, peer },
        }
    }

    /// Sends raw bytes to rank `to` (NCCL's unique id).
    pub fn send_bytes(&mut self, to: usize, bytes: &[u8]) -> Result<(), CommError> {
        write_frame(self.stream(to), bytes).map_err(|e| self.io(to, e))
    }

    /// Receives the bytes rank `from` sent with [`Self::send_bytes`].
    pub fn recv_bytes(&mut self, from: usize) -> Result<Vec<u8>, CommError> {
        read_frame(self.stream(from)).map_err(|e| self.io(from, e))
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError> {
        let s = self.stream(to);
        let sent = (|| {
            s.write_all(&(data.len() as u64 * 4).to_le_bytes())?;
            let mut bytes = Vec::with_capacity(CHUNK.min(data.len()) * 4);
            for chunk in data.chunks(CHUNK) {
                bytes.clear();
                bytes.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                s.write_all(&bytes)?;
            }
            Ok(())
        })();
        sent.map_err(|e| self.io(to, e))
    }

    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError> {
        let rank = self.rank;
        let s = self.stream(from);
        let got = (|| -> io::Result<Result<Vec<f32>, CommError>> {
            let mut n = [0u8; 8];
            s.read_exact(&mut n)?;
            let n = u64::from_le_bytes(n) as usize;
            if n != len * 4 {
                return Ok(Err(CommError::Mismatch { rank, peer: from, expected: len, got: n / 4 }));
            }
            let mut out = Vec::with_capacity(len);
            let mut bytes = vec![0u8; CHUNK.min(len) * 4];
            while out.len() < len {
                let k = (len - out.len()).min(CHUNK);
                s.read_exact(&mut bytes[..k * 4])?;
                out.extend(bytes[..k * 4].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
            }
            Ok(Ok(out))
        })();
        got.map_err(|e| self.io(from, e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `world` TCP ranks on loopback, each running `job`; results in rank order.
    pub(crate) fn on_tcp_ranks<T: Send + 'static>(
        world: usize,
        timeout: Duration,
        job: impl Fn(Result<TcpComm, CommError>) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let job = std::sync::Arc::new(job);
        let mut listener = Some(listener);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (job, l) = (job.clone(), listener.take());
                std::thread::spawn(move || job(TcpComm::join(rank, world, ("127.0.0.1", port), l, timeout)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    }

    #[test]
    fn messages_and_collectives_reach_every_rank() {
        let got = on_tcp_ranks(4, Duration::from_secs(20), |comm| {
            let mut c = comm.unwrap();
            let r = c.rank();
            // A ring of point-to-point messages, one large enough to go in several pieces.
            let big: Vec<f32> = (0..CHUNK + 7).map(|i| (i * (r + 1)) as f32 + 0.25).collect();
            let (next, prev) = ((r + 1) % 4, (r + 3) % 4);
            if r % 2 == 0 {
                c.send(next, &big).unwrap();
            }
            let from_prev = c.recv(prev, CHUNK + 7).unwrap();
            if r % 2 == 1 {
                c.send(next, &big).unwrap();
            }
            assert_eq!(from_prev[CHUNK + 6], ((CHUNK + 6) * (prev + 1)) as f32 + 0.25);
            let mut sum = vec![r as f32, 1.0];
            c.all_reduce_sum(&mut sum).unwrap();
            c.barrier().unwrap();
            if r > 0 {
                c.send_bytes(0, &[r as u8; 3]).unwrap();
            } else {
                for p in 1..4 {
                    assert_eq!(c.recv_bytes(p).unwrap(), vec![p as u8; 3]);
                }
            }
            sum
        });
        assert!(got.iter().all(|s| s == &[6.0, 4.0]), "{got:?}");
    }

    #[test]
    fn a_wrong_length_is_a_mismatch() {
        let got = on_tcp_ranks(2, Duration::from_secs(20), |comm| {
            let mut c = comm.unwrap();
            if c.rank() == 1 {
                c.send(0, &[1.0, 2.0, 3.0]).unwrap();
                None
            } else {
                Some(c.recv(1, 2).unwrap_err())
            }
        });
        assert!(matches!(got[0], Some(CommError::Mismatch { expected: 2, got: 3, .. })), "{got:?}");
    }

    #[test]
    fn a_rank_that_never_arrives_is_an_error_within_the_timeout() {
        // A world of 3 of which only ranks 0 and 1 start.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let one = std::thread::spawn(move || TcpComm::join(1, 3, ("127.0.0.1", port), None, Duration::from_secs(2)));
        let e = TcpComm::join(0, 3, ("127.0.0.1", port), Some(listener), Duration::from_secs(2)).unwrap_err();
        assert!(e.to_string().contains("ranks [2] did not arrive"), "{e}");
        assert!(one.join().unwrap().is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_rank_that_dies_is_gone_at_once_and_a_silent_one_times_out() {
        let got = on_tcp_ranks(3, Duration::from_secs(2), |comm| {
            let mut c = comm.unwrap();
            match c.rank() {
                // Rank 1 "dies": its sockets close as the process's would.
                1 => None,
                2 => {
                    let started = Instant::now();
                    let e = c.recv(0, 1).unwrap_err();
                    Some((e, started.elapsed()))
                }
                _ => {
                    let started = Instant::now();
                    let e = c.recv(1, 1).unwrap_err();
                    let out = Some((e, started.elapsed()));
                    // Hold rank 0's sockets open until rank 2 timed out.
                    std::thread::sleep(Duration::from_secs(3));
                    out
                }
            }
        });
        let (gone, t) = got[0].as_ref().unwrap();
        assert!(matches!(gone, CommError::PeerGone { rank: 0, peer: 1 }), "{gone}");
        assert!(*t < Duration::from_secs(2), "{t:?}");
        let (silent, _) = got[2].as_ref().unwrap();
        assert!(matches!(silent, CommError::Timeout { rank: 2, peer: 0, .. }), "{silent}");
    }

    #[test]
    fn strangers_are_ignored_and_a_wrong_world_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let zero = std::thread::spawn(move || {
            TcpComm::join(0, 2, ("127.0.0.1", port), Some(listener), Duration::from_secs(5)).map(|_| ())
        });
        // A stranger writes something else and leaves; then a rank of a 3-rank run arrives.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        drop(s);
        let other = TcpComm::join(1, 3, ("127.0.0.1", port), None, Duration::from_secs(5));
        let e = zero.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("rank 1 was started for 3 ranks, rank 0 for 2"), "{e}");
        assert!(other.is_err());
    }
}
