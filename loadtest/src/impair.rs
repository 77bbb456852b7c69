//! A user-space link impairment proxy for UDP (QUIC): delay, jitter, loss, a bandwidth cap and
//! blackouts, seeded so a run repeats. The kernel's netem is not available here, and a proxy
//! between two loopback ports is all a test of the edge's uplink needs.
//!
//! Packets from a client to the proxy's address go to `target` from a socket of their own per
//! client (so the target sees distinct peers); replies travel back the same way. Jitter
//! reorders packets naturally, as it does on real links.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the link misbehaves, per direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability of dropping each packet, 0..1.
    pub loss: f64,
    /// Bytes per second, 0 = unlimited.
    pub bandwidth: u64,
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth: 0,
            seed: 1,
        }
    }
}

/// Counters of what the proxy did.
#[derive(Default, Debug)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_blackout: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct UdpProxy {
    pub listen: SocketAddr,
    blackout: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<ProxyStats>,
    thread: Option<JoinHandle<()>>,
}

#[derive(PartialEq, Eq)]
struct Due {
    at: Instant,
    seq: u64,
    to_target: bool,
    client: SocketAddr,
    data: Vec<u8>,
}

impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl UdpProxy {
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        imp: Impairment,
    ) -> std::io::Result<UdpProxy> {
        let front = UdpSocket::bind(listen)?;
        front.set_nonblocking(true)?;
        let listen = front.local_addr()?;
        let blackout = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ProxyStats::default());
        let thread = {
            let (blackout, stop, stats) = (blackout.clone(), stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("udp-proxy".into())
                .spawn(move || run(front, target, imp, blackout, stop, stats))?
        };
        Ok(UdpProxy {
            listen,
            blackout,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Cuts (or restores) the link in both directions.
    pub fn set_blackout(&self, on: bool) {
        self.blackout.store(on, Ordering::SeqCst);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    front: UdpSocket,
    target: SocketAddr,
    imp: Impairment,
    blackout: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    stats: Arc<ProxyStats>,
) {
    let mut rng = StdRng::seed_from_u64(imp.seed);
    let mut backs: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut queue: BinaryHeap<Due> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    // Bandwidth: the time the link is busy until, per direction.
    let mut busy_until = [Instant::now(), Instant::now()];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        let now = Instant::now();
        let mut incoming: Vec<(bool, SocketAddr, Vec<u8>)> = Vec::new();
        loop {
            match front.recv_from(&mut buf) {
                Ok((n, from)) => incoming.push((true, from, buf[..n].to_vec())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        for (client, sock) in &backs {
            while let Ok(n) = sock.recv(&mut buf) {
                incoming.push((false, *client, buf[..n].to_vec()));
            }
        }
        for (to_target, client, data) in incoming {
            idle = false;
            if to_target && !backs.contains_key(&client) {
                match UdpSocket::bind("127.0.0.1:0").and_then(|s| {
                    s.connect(target)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                }) {
                    Ok(s) => {
                        backs.insert(client, s);
                    }
                    Err(_) => continue,
                }
            }
            if blackout.load(Ordering::Relaxed) {
                stats.dropped_blackout.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if imp.loss > 0.0 && rng.gen::<f64>() < imp.loss {
                stats.dropped_loss.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let jitter = if imp.jitter.is_zero() {
                Duration::ZERO
            } else {
                imp.jitter.mul_f64(rng.gen::<f64>())
            };
            let mut at = now + imp.delay + jitter;
            if imp.bandwidth > 0 {
                let d = to_target as usize;
                let start = busy_until[d].max(now);
                busy_until[d] =
                    start + Duration::from_secs_f64(data.len() as f64 / imp.bandwidth as f64);
                at = at.max(busy_until[d]);
            }
            seq += 1;
            queue.push(Due {
                at,
                seq,
                to_target,
                client,
                data,
            });
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|d| d.at <= now) {
            let Some(d) = queue.pop() else { break };
            idle = false;
            // A blackout also eats what was in flight.
            if blackout.load(Ordering::Relaxed) {
                stats.dropped_blackout.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let sent = if d.to_target {
                backs.get(&d.client).map(|s| s.send(&d.data))
            } else {
                Some(front.send_to(&d.data, d.client))
            };
            if let Some(Ok(n)) = sent {
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, Arc<AtomicBool>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut b) {
                    let _ = s.send_to(&b[..n], from);
                }
            }
        });
        (addr, stop)
    }

    #[test]
    fn delays_drops_and_blackouts_as_configured() {
        let (echo, stop) = echo_server();
        let p = UdpProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            echo,
            Impairment {
                delay: Duration::from_millis(30),
                ..Default::default()
            },
        )
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let t = Instant::now();
        c.send_to(b"ping", p.listen).unwrap();
        let mut b = [0u8; 16];
        let n = c.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"ping");
        // 30 ms each way.
        assert!(t.elapsed() >= Duration::from_millis(60));
        p.set_blackout(true);
        c.send_to(b"lost", p.listen).unwrap();
        assert!(c.recv(&mut b).is_err());
        p.set_blackout(false);
        c.send_to(b"back", p.listen).unwrap();
        let n = c.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"back");
        assert!(p.stats.dropped_blackout.load(Ordering::Relaxed) >= 1);
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn loss_rate_is_close_to_configured() {
        let count = |seed| {
            let (echo, stop) = echo_server();
            let p = UdpProxy::start(
                "127.0.0.1:0".parse().unwrap(),
                echo,
                Impairment {
                    loss: 0.2,
                    seed,
                    ..Default::default()
                },
            )
            .unwrap();
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..500u32 {
                c.send_to(&i.to_le_bytes(), p.listen).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::SeqCst);
            p.stats.dropped_loss.load(Ordering::Relaxed)
        };
        let a = count(7);
        // Both directions lose 20%: about 100 of 500 forward, then 20% of the echoes.
        assert!((60..=220).contains(&a), "{a}");
    }
}
