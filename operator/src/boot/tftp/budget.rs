//! Per-client budgets, so the server cannot be used as an amplifier: a small spoofed request
//! must not buy a flood of DATA towards a victim. Pure: every call takes `now`.
//!
//! Each client IP has a concurrent-transfer limit and two token buckets (packets and bytes per
//! second) shared by all its transfers and by the error replies sent to it. A sender that is
//! over budget waits; nothing is dropped, so a legitimate client only slows down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BudgetConfig {
    /// Concurrent transfers one client IP may hold. A PXE ROM needs one or two at a time.
    pub max_transfers_per_client: usize,
    pub packets_per_sec: u32,
    pub bytes_per_sec: u64,
    /// How much of a second's budget may be spent at once (a burst), in seconds.
    pub burst: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_transfers_per_client: 8,
            packets_per_sec: 20_000,
            bytes_per_sec: 64 << 20,
            burst: Duration::from_millis(250),
        }
    }
}

/// Tokens accrue at `rate` per second up to `rate × burst`. A spend is allowed whenever the
/// balance is not negative and may take it below zero; this keeps one large packet from waiting
/// forever on a small bucket while the average rate still holds.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, capacity: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.last = now;
    }

    /// Time until the balance is back at zero, if it is negative.
    fn wait(&self, rate: f64) -> Option<Duration> {
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

#[derive(Clone, Debug)]
struct ClientState {
    transfers: usize,
    packets: Bucket,
    bytes: Bucket,
}

/// Why a transfer may not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("this client already has {0} transfers in progress; wait for one to finish")]
    TooManyTransfers(usize),
}

#[derive(Debug)]
pub struct ClientBudgets {
    config: BudgetConfig,
    clients: HashMap<IpAddr, ClientState>,
}

/// Idle clients are forgotten once the table holds this many; a client whose buckets are full
/// and who has no transfer carries no state worth keeping.
const PRUNE_ABOVE: usize = 1024;

impl ClientBudgets {
    pub fn new(config: BudgetConfig) -> Self {
        ClientBudgets {
            config,
            clients: HashMap::new(),
        }
    }

    fn rates(&self) -> (f64, f64, f64, f64) {
        let burst = self.config.burst.as_secs_f64().max(0.001);
        let prate = f64::from(self.config.packets_per_sec.max(1));
        let brate = (self.config.bytes_per_sec.max(1)) as f64;
        (prate, prate * burst, brate, brate * burst)
    }

    fn state(&mut self, ip: IpAddr, now: Instant) -> &mut ClientState {
        let (prate, pcap, brate, bcap) = self.rates();
        if self.clients.len() >= PRUNE_ABOVE && !self.clients.contains_key(&ip) {
            self.prune(now);
        }
        let state = self.clients.entry(ip).or_insert_with(|| ClientState {
            transfers: 0,
            packets: Bucket::new(pcap, now),
            bytes: Bucket::new(bcap, now),
        });
        state.packets.refill(prate, pcap, now);
        state.bytes.refill(brate, bcap, now);
        state
    }

    /// Registers a new transfer for `ip`, or refuses it.
    pub fn start_transfer(&mut self, ip: IpAddr, now: Instant) -> Result<(), BudgetError> {
        let max = self.config.max_transfers_per_client;
        let state = self.state(ip, now);
        if state.transfers >= max {
            return Err(BudgetError::TooManyTransfers(state.transfers));
        }
        state.transfers += 1;
        Ok(())
    }

    pub fn end_transfer(&mut self, ip: IpAddr, now: Instant) {
        if let Some(state) = self.clients.get_mut(&ip) {
            state.transfers = state.transfers.saturating_sub(1);
        }
        if self.clients.len() >= PRUNE_ABOVE {
            self.prune(now);
        }
    }

    pub fn transfers(&self, ip: IpAddr) -> usize {
        self.clients.get(&ip).map_or(0, |s| s.transfers)
    }

    /// Spends one packet of `bytes` towards `ip`. `Ok` means send now; `Err(d)` means the
    /// client is over budget: wait `d` and ask again (nothing was spent).
    pub fn spend(&mut self, ip: IpAddr, bytes: usize, now: Instant) -> Result<(), Duration> {
        self.spend_packets(ip, 1, bytes, now)
    }

    /// [`spend`](Self::spend) for `packets` packets of `bytes` in all, sent at once (a window):
    /// allowed whenever the balance is not negative, like a single packet.
    pub fn spend_packets(
        &mut self,
        ip: IpAddr,
        packets: usize,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        let (prate, _, brate, _) = self.rates();
        let state = self.state(ip, now);
        let wait = match (state.packets.wait(prate), state.bytes.wait(brate)) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or_default().max(b.unwrap_or_default())),
        };
        if let Some(wait) = wait {
            return Err(wait.max(Duration::from_micros(100)));
        }
        state.packets.tokens -= packets as f64;
        state.bytes.tokens -= bytes as f64;
        Ok(())
    }

    /// Forgets clients with no transfer and full buckets.
    pub fn prune(&mut self, now: Instant) {
        let (prate, pcap, brate, bcap) = self.rates();
        self.clients.retain(|_, s| {
            s.packets.refill(prate, pcap, now);
            s.bytes.refill(brate, bcap, now);
            s.transfers > 0 || s.packets.tokens < pcap || s.bytes.tokens < bcap
        });
    }

    pub fn tracked_clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn config() -> BudgetConfig {
        BudgetConfig {
            max_transfers_per_client: 2,
            packets_per_sec: 100,
            bytes_per_sec: 10_000,
            burst: Duration::from_millis(100),
        }
    }

    #[test]
    fn transfer_limit_is_per_client() {
        let now = Instant::now();
        let mut b = ClientBudgets::new(config());
        assert!(b.start_transfer(A, now).is_ok());
        assert!(b.start_transfer(A, now).is_ok());
        assert_eq!(
            b.start_transfer(A, now),
            Err(BudgetError::TooManyTransfers(2))
        );
        assert!(b.start_transfer(B, now).is_ok());
        b.end_transfer(A, now);
        assert_eq!(b.transfers(A), 1);
        assert!(b.start_transfer(A, now).is_ok());
        // Ending more than were started never underflows.
        for _ in 0..5 {
            b.end_transfer(B, now);
        }
        assert_eq!(b.transfers(B), 0);
    }

    #[test]
    fn packet_rate_is_enforced_and_refills() {
        let t0 = Instant::now();
        let mut b = ClientBudgets::new(config());
        // Burst: 100 pkt/s × 0.1 s = 10 packets bring the balance to zero, and one more
        // packet may take it negative.
        let mut sent = 0;
        while b.spend(A, 1, t0).is_ok() {
            sent += 1;
            assert!(sent < 100, "bucket never ran dry");
        }
        assert_eq!(sent, 11);
        let wait = b.spend(A, 1, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(20),
            "{wait:?}"
        );
        // Another client is unaffected.
        assert!(b.spend(B, 1, t0).is_ok());
        // After the wait the client may send again, at the configured rate.
        assert!(b.spend(A, 1, t0 + wait).is_ok());
        let later = t0 + Duration::from_secs(1);
        let mut sent = 0;
        while b.spend(A, 1, later).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 11, "refill is capped at the burst");
    }

    #[test]
    fn byte_rate_is_enforced_and_large_packets_still_pass() {
        let t0 = Instant::now();
        let mut b = ClientBudgets::new(config());
        // Capacity 1000 bytes; a 5000-byte packet passes once (balance −4000), then waits 0.4 s.
        assert!(b.spend(A, 5000, t0).is_ok());
        let wait = b.spend(A, 1, t0).unwrap_err();
        assert!(
            wait >= Duration::from_millis(399) && wait <= Duration::from_millis(401),
            "{wait:?}"
        );
        assert!(b.spend(A, 1, t0 + Duration::from_millis(350)).is_err());
        assert!(b.spend(A, 1, t0 + Duration::from_millis(401)).is_ok());
    }

    #[test]
    fn a_window_spends_every_packet_in_it() {
        let t0 = Instant::now();
        let mut b = ClientBudgets::new(config());
        // Capacity 10 packets: a window of 16 passes (overdraft), then the client waits for
        // the 6 packets it overdrew plus one, at 100 packets/s.
        assert!(b.spend_packets(A, 16, 16 * 10, t0).is_ok());
        let wait = b.spend(A, 1, t0).unwrap_err();
        assert!(
            wait >= Duration::from_millis(59) && wait <= Duration::from_millis(61),
            "{wait:?}"
        );
        // Sustained, windows keep to the configured packet rate like single packets do.
        let mut now = t0 + wait;
        let mut packets = 0u32;
        while now < t0 + Duration::from_secs(10) {
            match b.spend_packets(A, 16, 16 * 10, now) {
                Ok(()) => packets += 16,
                Err(wait) => now += wait,
            }
        }
        assert!((1000..=1032).contains(&packets), "{packets}");
    }

    #[test]
    fn sustained_rate_matches_configuration() {
        let t0 = Instant::now();
        let mut b = ClientBudgets::new(config());
        let mut now = t0;
        let mut packets = 0u32;
        while now < t0 + Duration::from_secs(10) {
            match b.spend(A, 10, now) {
                Ok(()) => packets += 1,
                Err(wait) => now += wait,
            }
        }
        // 100 packets/s for 10 s plus the initial burst of 10 (and the one overdraft).
        assert!((1000..=1012).contains(&packets), "{packets}");
    }

    #[test]
    fn idle_clients_are_pruned() {
        let t0 = Instant::now();
        let mut b = ClientBudgets::new(config());
        b.start_transfer(A, t0).unwrap();
        b.spend(B, 100, t0).unwrap();
        b.prune(t0);
        assert_eq!(b.tracked_clients(), 2, "B's bucket is not yet refilled");
        b.prune(t0 + Duration::from_secs(1));
        assert_eq!(b.tracked_clients(), 1, "A still has a transfer");
        b.end_transfer(A, t0 + Duration::from_secs(1));
        b.prune(t0 + Duration::from_secs(2));
        assert_eq!(b.tracked_clients(), 0);
    }
}
