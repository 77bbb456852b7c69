//! A UDP relay that counts packets and payload bytes per direction, and otherwise does nothing
//! to them: the wire cost of the edge's uplink, measured outside both processes.
//!
//! [`crate::impair::UdpProxy`] counts both directions together; measuring bytes per share needs
//! the edge → core direction alone. Packets from a client to [`UdpMeter::listen`] go to
//! `target` from a socket of their own per client; replies go back the same way.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// IPv4 (20) + UDP (8) header bytes of every datagram, not in the payload counts.
pub const IPV4_UDP_HEADER: u64 = 28;

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    pub packets: AtomicU64,
    pub payload_bytes: AtomicU64,
}

/// A copy of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionSnapshot {
    pub packets: u64,
    pub payload_bytes: u64,
}

impl DirectionSnapshot {
    /// Payload plus IPv4 and UDP headers.
    pub fn wire_bytes(&self) -> u64 {
        self.payload_bytes + self.packets * IPV4_UDP_HEADER
    }

    pub fn since(&self, earlier: &DirectionSnapshot) -> DirectionSnapshot {
        DirectionSnapshot {
            packets: self.packets.saturating_sub(earlier.packets),
            payload_bytes: self.payload_bytes.saturating_sub(earlier.payload_bytes),
        }
    }
}

impl DirectionStats {
    pub fn snapshot(&self) -> DirectionSnapshot {
        DirectionSnapshot {
            packets: self.packets.load(Ordering::Relaxed),
            payload_bytes: self.payload_bytes.load(Ordering::Relaxed),
        }
    }

    fn count(&self, n: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.payload_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Per-direction counters: `to_target` is client → target (edge → core).
#[derive(Debug, Default)]
pub struct MeterStats {
    pub to_target: DirectionStats,
    pub to_client: DirectionStats,
}

pub struct UdpMeter {
    pub listen: SocketAddr,
    pub stats: Arc<MeterStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpMeter {
    pub fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<UdpMeter> {
        let front = UdpSocket::bind(listen)?;
        front.set_read_timeout(Some(Duration::from_millis(1)))?;
        let listen = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(MeterStats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("udp-meter".into())
                .spawn(move || relay_loop(front, target, &stop, &stats))?
        };
        Ok(UdpMeter {
            listen,
            stats,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_loop(front: UdpSocket, target: SocketAddr, stop: &AtomicBool, stats: &MeterStats) {
    let mut backs: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        // Client → target: the first packet blocks up to the read timeout, the rest drain.
        for _ in 0..256 {
            let (n, from) = match front.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => break,
            };
            busy = true;
            let _ = front.set_nonblocking(true);
            let sock = match backs.get(&from) {
                Some(s) => s,
                None => {
                    let made = UdpSocket::bind("127.0.0.1:0").and_then(|s| {
                        s.connect(target)?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    });
                    match made {
                        Ok(s) => backs.entry(from).or_insert(s),
                        Err(_) => continue,
                    }
                }
            };
            if let Ok(sent) = sock.send(&buf[..n]) {
                stats.to_target.count(sent);
            }
        }
        for (client, sock) in &backs {
            for _ in 0..256 {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        busy = true;
                        if let Ok(sent) = front.send_to(&buf[..n], client) {
                            stats.to_client.count(sent);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        if !busy {
            // Back to a short blocking read so an idle relay does not spin.
            let _ = front.set_nonblocking(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_direction_separately() {
        let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
        echo.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let echo_addr = echo.local_addr().expect("addr");
        let meter =
            UdpMeter::start("127.0.0.1:0".parse().expect("addr"), echo_addr).expect("meter");
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        c.send_to(&[7u8; 100], meter.listen).expect("send");
        let mut b = [0u8; 256];
        let (n, from) = echo.recv_from(&mut b).expect("relayed");
        assert_eq!(n, 100);
        echo.send_to(&b[..10], from).expect("reply");
        assert_eq!(c.recv(&mut b).expect("reply relayed"), 10);
        // The relay counts after it forwards: the reply can reach us a moment before that.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while meter.stats.to_client.snapshot().packets == 0 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let up = meter.stats.to_target.snapshot();
        let down = meter.stats.to_client.snapshot();
        assert_eq!((up.packets, up.payload_bytes), (1, 100));
        assert_eq!((down.packets, down.payload_bytes), (1, 10));
        assert_eq!(up.wire_bytes(), 128);
    }
}
