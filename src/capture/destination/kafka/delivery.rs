//! Which LSN is durable in Kafka: delivery reports folded into one position.
//!
//! Events are sent in units (a transaction, acknowledged at its commit end
//! LSN). Kafka acknowledges messages out of order across partitions, so a
//! unit's LSN becomes durable only when every message of that unit **and of
//! every earlier unit** has been acknowledged. The durable LSN only moves
//! forward. A failed delivery poisons the tracker: nothing after it can
//! become durable, and the capture loop stops without acknowledging.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

use crate::postgres::Lsn;

#[derive(Debug)]
struct Unit {
    /// `None` while the unit is still being sent.
    ack: Option<Lsn>,
    outstanding: u64,
}

#[derive(Debug)]
struct State {
    units: VecDeque<Unit>,
    /// Sequence number of `units[0]`.
    first_seq: u64,
    durable: Lsn,
    in_flight: u64,
    failed: Option<String>,
}

/// Shared between the capture loop (sends, closes units) and librdkafka's
/// delivery callback thread (reports).
#[derive(Debug)]
pub struct DeliveryTracker {
    state: Mutex<State>,
    changed: Notify,
}

impl Default for DeliveryTracker {
    fn default() -> Self {
        let mut units = VecDeque::new();
        units.push_back(Unit {
            ack: None,
            outstanding: 0,
        });
        DeliveryTracker {
            state: Mutex::new(State {
                units,
                first_seq: 0,
                durable: Lsn::ZERO,
                in_flight: 0,
                failed: None,
            }),
            changed: Notify::new(),
        }
    }
}

impl DeliveryTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked mid-update of
        // a counter: at worst an LSN is not acknowledged (safe direction).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers one message of the open unit; returns the unit's sequence
    /// number, to be passed back to [`delivered`](Self::delivered).
    pub fn sent(&self) -> u64 {
        let mut s = self.lock();
        s.in_flight += 1;
        let seq = s.first_seq + s.units.len() as u64 - 1;
        if let Some(open) = s.units.back_mut() {
            open.outstanding += 1;
        }
        seq
    }

    /// Takes back a registration whose message never left (send refused).
    pub fn unsent(&self, seq: u64) {
        self.report(seq, None);
    }

    /// A delivery report for a message of unit `seq`.
    pub fn delivered(&self, seq: u64, result: Result<(), String>) {
        self.report(seq, result.err());
    }

    fn report(&self, seq: u64, error: Option<String>) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(e) = error {
            s.failed.get_or_insert(e);
        }
        let index = seq.checked_sub(s.first_seq).map(|i| i as usize);
        if let Some(unit) = index.and_then(|i| s.units.get_mut(i)) {
            unit.outstanding = unit.outstanding.saturating_sub(1);
        }
        advance(&mut s);
        drop(s);
        self.changed.notify_one();
    }

    /// Closes the open unit: once all its messages (and all before) are
    /// acknowledged, `ack` is durable.
    pub fn close_unit(&self, ack: Lsn) {
        let mut s = self.lock();
        if let Some(open) = s.units.back_mut() {
            open.ack = Some(ack);
        }
        s.units.push_back(Unit {
            ack: None,
            outstanding: 0,
        });
        advance(&mut s);
        drop(s);
        self.changed.notify_one();
    }

    /// Closes the open unit without an LSN (a transaction cut off by a lost
    /// connection: it will be sent again whole).
    pub fn abandon_unit(&self) {
        self.close_unit(Lsn::ZERO);
    }

    /// The highest durable LSN, or the first delivery error.
    pub fn durable(&self) -> Result<Lsn, String> {
        let s = self.lock();
        match &s.failed {
            Some(e) => Err(e.clone()),
            None => Ok(s.durable),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    /// Resolves after the next delivery report or unit close.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

fn advance(s: &mut State) {
    while s.units.len() > 1 {
        let front = &s.units[0];
        let (Some(ack), 0) = (front.ack, front.outstanding) else {
            break;
        };
        s.durable = s.durable.max(ack);
        s.units.pop_front();
        s.first_seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_durable_only_after_all_its_messages_and_all_earlier_units() {
        let t = DeliveryTracker::default();
        let a1 = t.sent();
        let a2 = t.sent();
        t.close_unit(Lsn(10));
        let b1 = t.sent();
        t.close_unit(Lsn(20));
        assert_eq!(t.durable(), Ok(Lsn::ZERO));
        // The later unit completes first: still nothing durable.
        t.delivered(b1, Ok(()));
        assert_eq!(t.durable(), Ok(Lsn::ZERO));
        t.delivered(a2, Ok(()));
        assert_eq!(t.durable(), Ok(Lsn::ZERO), "a1 outstanding");
        t.delivered(a1, Ok(()));
        assert_eq!(t.durable(), Ok(Lsn(20)), "both units complete, in order");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_open_unit_is_never_durable() {
        let t = DeliveryTracker::default();
        let a = t.sent();
        t.delivered(a, Ok(()));
        assert_eq!(t.durable(), Ok(Lsn::ZERO));
        t.close_unit(Lsn(5));
        assert_eq!(t.durable(), Ok(Lsn(5)));
        // An empty unit (a transaction with nothing to send) is durable at once.
        t.close_unit(Lsn(6));
        assert_eq!(t.durable(), Ok(Lsn(6)));
    }

    #[test]
    fn a_failure_stops_all_progress() {
        let t = DeliveryTracker::default();
        let a = t.sent();
        t.close_unit(Lsn(10));
        let b = t.sent();
        t.close_unit(Lsn(20));
        t.delivered(a, Err("broker gone".into()));
        t.delivered(b, Ok(()));
        assert_eq!(t.durable(), Err("broker gone".into()));
    }

    #[test]
    fn an_abandoned_unit_holds_later_ones_until_its_messages_settle() {
        let t = DeliveryTracker::default();
        let a = t.sent();
        t.abandon_unit();
        let b = t.sent();
        t.close_unit(Lsn(30));
        t.delivered(b, Ok(()));
        assert_eq!(t.durable(), Ok(Lsn::ZERO));
        t.unsent(a);
        assert_eq!(t.durable(), Ok(Lsn(30)));
    }
}
