//! The table of transfers in progress, and who gets a slot when it is full. Pure: the shell
//! holds it behind a lock and passes `now`.
//!
//! TFTP runs over UDP, so a request's source address proves nothing: anyone on the
//! provisioning network can send read requests that look like they come from hundreds of
//! machines and never answer. Such a transfer holds its slot until it times out. When the table
//! is full, a new request therefore takes the slot of the oldest transfer whose client has not
//! answered once yet ("unconfirmed"). A real client answers within a round trip, so its slot
//! is only at risk for that long, and only after every older unconfirmed one; a spoofed
//! request's slot is taken by the next request that needs it. Confirmed transfers (clients that
//! acknowledged something) are never evicted: only a full table of those makes a request wait
//! ("server busy").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug)]
struct Entry<C> {
    id: u64,
    started: Instant,
    confirmed: bool,
    handle: C,
}

/// The answer to a request for a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<C> {
    /// This client port already has a transfer: the request is a retransmission.
    Duplicate,
    /// Admitted with this id; `evicted` is the transfer that gave up its slot (its client,
    /// id and handle), to be cancelled by the caller.
    Admitted {
        id: u64,
        evicted: Option<(SocketAddr, u64, C)>,
    },
    /// Every slot is held by a client that has answered.
    Busy,
}

#[derive(Debug)]
pub struct SlotTable<C> {
    max: usize,
    next_id: u64,
    entries: HashMap<SocketAddr, Entry<C>>,
}

impl<C> SlotTable<C> {
    pub fn new(max: usize) -> Self {
        SlotTable {
            max: max.max(1),
            next_id: 0,
            entries: HashMap::new(),
        }
    }

    pub fn contains(&self, client: &SocketAddr) -> bool {
        self.entries.contains_key(client)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Transfers whose client has not answered yet.
    pub fn unconfirmed(&self) -> usize {
        self.entries.values().filter(|e| !e.confirmed).count()
    }

    /// Gives `client` a slot, evicting the oldest unconfirmed transfer when the table is full.
    pub fn admit(&mut self, client: SocketAddr, now: Instant, handle: C) -> Admit<C> {
        if self.entries.contains_key(&client) {
            return Admit::Duplicate;
        }
        let mut evicted = None;
        if self.entries.len() >= self.max {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| !e.confirmed)
                .min_by_key(|(_, e)| (e.started, e.id))
                .map(|(addr, _)| *addr);
            let Some(victim) = victim else {
                return Admit::Busy;
            };
            if let Some(e) = self.entries.remove(&victim) {
                evicted = Some((victim, e.id, e.handle));
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.entries.insert(
            client,
            Entry {
                id,
                started: now,
                confirmed: false,
                handle,
            },
        );
        Admit::Admitted { id, evicted }
    }

    /// The client of transfer `id` answered: its slot is no longer up for eviction.
    pub fn confirm(&mut self, client: &SocketAddr, id: u64) {
        if let Some(e) = self.entries.get_mut(client).filter(|e| e.id == id) {
            e.confirmed = true;
        }
    }

    /// Frees the slot of transfer `id`; false when it was already freed (evicted), so the
    /// caller does not release its budget twice.
    pub fn release(&mut self, client: &SocketAddr, id: u64) -> bool {
        if self.entries.get(client).is_some_and(|e| e.id == id) {
            self.entries.remove(client);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 2000))
    }

    fn admitted(a: Admit<()>) -> (u64, Option<(SocketAddr, u64, ())>) {
        match a {
            Admit::Admitted { id, evicted } => (id, evicted),
            other => panic!("expected Admitted, got {other:?}"),
        }
    }

    #[test]
    fn a_retransmitted_request_is_a_duplicate() {
        let t0 = Instant::now();
        let mut t = SlotTable::new(4);
        admitted(t.admit(addr(1), t0, ()));
        assert_eq!(t.admit(addr(1), t0, ()), Admit::Duplicate);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_gives_the_oldest_unconfirmed_slot_to_a_new_client() {
        let t0 = Instant::now();
        let mut t = SlotTable::new(3);
        let (a, _) = admitted(t.admit(addr(1), t0, ()));
        let (b, _) = admitted(t.admit(addr(2), t0 + Duration::from_secs(1), ()));
        let (_c, _) = admitted(t.admit(addr(3), t0 + Duration::from_secs(2), ()));
        // addr(1) answered: never evicted. addr(2) is the oldest that did not.
        t.confirm(&addr(1), a);
        let (_, evicted) = admitted(t.admit(addr(4), t0 + Duration::from_secs(3), ()));
        assert_eq!(evicted, Some((addr(2), b, ())));
        assert!(!t.contains(&addr(2)));
        assert!(t.contains(&addr(1)) && t.contains(&addr(4)));
        assert_eq!(t.len(), 3);
        // The evicted transfer's own release later finds its slot gone.
        assert!(!t.release(&addr(2), b));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_table_full_of_answering_clients_is_busy() {
        let t0 = Instant::now();
        let mut t = SlotTable::new(2);
        for n in 1..=2 {
            let (id, _) = admitted(t.admit(addr(n), t0, ()));
            t.confirm(&addr(n), id);
        }
        assert_eq!(t.admit(addr(3), t0, ()), Admit::Busy);
        assert_eq!(t.unconfirmed(), 0);
    }

    #[test]
    fn a_flood_of_silent_requests_never_keeps_a_real_client_out() {
        let t0 = Instant::now();
        let mut t = SlotTable::new(512);
        // Thousands of spoofed requests, from as many addresses, none ever answering.
        for n in 0..5000u16 {
            admitted(t.admit(addr(n), t0 + Duration::from_millis(u64::from(n)), ()));
        }
        assert_eq!(t.len(), 512);
        // The real client gets a slot, answers, and keeps it through the rest of the flood.
        let now = t0 + Duration::from_secs(10);
        let real = SocketAddr::from(([192, 168, 1, 10], 3000));
        let (id, evicted) = admitted(t.admit(real, now, ()));
        assert!(evicted.is_some());
        t.confirm(&real, id);
        for n in 5000..20000u16 {
            admitted(t.admit(addr(n), now + Duration::from_millis(1), ()));
        }
        assert!(t.contains(&real));
        assert!(t.release(&real, id));
    }

    #[test]
    fn release_and_confirm_name_the_transfer_not_just_the_client() {
        let t0 = Instant::now();
        let mut t = SlotTable::new(1);
        let (old, _) = admitted(t.admit(addr(1), t0, ()));
        // Evicted by the same client port's new transfer... (a new RRQ after eviction).
        let (_, ev) = admitted(t.admit(addr(2), t0, ()));
        assert_eq!(ev.map(|e| e.1), Some(old));
        let (new, _) = admitted(t.admit(addr(1), t0, ()));
        // A stale id neither confirms nor releases the newer transfer.
        t.confirm(&addr(1), old);
        assert_eq!(t.unconfirmed(), 1);
        assert!(!t.release(&addr(1), old));
        assert!(t.release(&addr(1), new));
    }
}
