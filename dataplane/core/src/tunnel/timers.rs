//! The protocol's timing constants (whitepaper section 6.1) and the
//! per-peer timer set that enforces them (section 6.2 to 6.5).
//!
//! Timers are deadlines on the data-plane clock, checked when the owning
//! worker polls the peer; nothing sleeps or fires asynchronously.

use serde::Deserialize;

const S: u64 = 1_000_000_000;

/// The protocol's times, overridable (in whole seconds) so that tests can
/// force rekeys quickly. Defaults are the whitepaper's.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TimerSettings {
    /// Initiators start a new handshake when their session is this old (`Rekey-After-Time`).
    pub rekey_after_time_s: u32,
    /// A session this old is never used again (`Reject-After-Time`).
    pub reject_after_time_s: u32,
    /// Retransmitted initiations give up after this long (`Rekey-Attempt-Time`).
    pub rekey_attempt_time_s: u32,
    /// An unanswered initiation is retransmitted after this (`Rekey-Timeout`).
    pub rekey_timeout_s: u32,
    /// A keepalive answers received data when we sent nothing for this long (`Keepalive-Timeout`).
    pub keepalive_timeout_s: u32,
    /// A session that sent this many messages is rekeyed (`Rekey-After-Messages`).
    pub rekey_after_messages: u64,
}

impl Default for TimerSettings {
    fn default() -> Self {
        TimerSettings {
            rekey_after_time_s: 120,
            reject_after_time_s: 180,
            rekey_attempt_time_s: 90,
            rekey_timeout_s: 5,
            keepalive_timeout_s: 10,
            rekey_after_messages: 1 << 60,
        }
    }
}

impl TimerSettings {
    /// `Rekey-After-Time` in ns.
    pub fn rekey_after_time(&self) -> u64 {
        u64::from(self.rekey_after_time_s) * S
    }
    /// `Reject-After-Time` in ns.
    pub fn reject_after_time(&self) -> u64 {
        u64::from(self.reject_after_time_s) * S
    }
    /// `Rekey-Timeout` in ns.
    pub fn rekey_timeout(&self) -> u64 {
        u64::from(self.rekey_timeout_s) * S
    }
    /// `Keepalive-Timeout` in ns.
    pub fn keepalive_timeout(&self) -> u64 {
        u64::from(self.keepalive_timeout_s) * S
    }
    /// Initiations sent in one attempt before giving up.
    pub fn max_attempts(&self) -> u32 {
        (self.rekey_attempt_time_s / self.rekey_timeout_s.max(1)).max(1)
    }
    /// An initiator's received session this old prompts a new handshake
    /// (`Reject-After-Time - Keepalive-Timeout - Rekey-Timeout`), so that the
    /// responder never has to use a session past its end.
    pub fn rekey_on_receive_age(&self) -> u64 {
        self.reject_after_time()
            .saturating_sub(self.keepalive_timeout())
            .saturating_sub(self.rekey_timeout())
    }
    /// All keys are erased this long after the last handshake (3 x `Reject-After-Time`).
    pub fn zero_keys_after(&self) -> u64 {
        3 * self.reject_after_time()
    }

    /// Checks relations the protocol depends on; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rekey_timeout_s == 0 {
            return Err("rekey_timeout_s must be at least 1".into());
        }
        if self.keepalive_timeout_s == 0 {
            return Err("keepalive_timeout_s must be at least 1".into());
        }
        if self.rekey_after_time_s == 0 || self.rekey_after_time_s >= self.reject_after_time_s {
            return Err(format!(
                "rekey_after_time_s ({}) must be at least 1 and below reject_after_time_s ({})",
                self.rekey_after_time_s, self.reject_after_time_s
            ));
        }
        if self.rekey_attempt_time_s < self.rekey_timeout_s {
            return Err("rekey_attempt_time_s must be at least rekey_timeout_s".into());
        }
        if self.rekey_after_messages == 0 {
            return Err("rekey_after_messages must be at least 1".into());
        }
        Ok(())
    }
}

/// Which timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// An initiation went unanswered: send another, or give up.
    RetransmitHandshake,
    /// Data arrived and we sent nothing back: send a keepalive.
    SendKeepalive,
    /// We sent data and heard nothing back: start a new handshake.
    NewHandshake,
    /// No handshake for 3 x `Reject-After-Time`: erase every key.
    ZeroKeys,
    /// The configured persistent keepalive interval passed in silence.
    PersistentKeepalive,
}

/// One peer's deadlines (ns on the data-plane clock; `None` when not armed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTimers {
    retransmit_handshake: Option<u64>,
    send_keepalive: Option<u64>,
    new_handshake: Option<u64>,
    zero_keys: Option<u64>,
    persistent_keepalive: Option<u64>,
    /// Data arrived while a keepalive was already due: send another after it.
    another_keepalive: bool,
    /// Initiations sent in the current attempt.
    pub attempts: u32,
}

impl PeerTimers {
    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_keys,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes the first timer due at `now` (disarming it), if any.
    pub fn take_due(&mut self, now: u64) -> Option<Timer> {
        let due = |t: &mut Option<u64>| t.is_some_and(|at| at <= now) && t.take().is_some();
        if due(&mut self.zero_keys) {
            return Some(Timer::ZeroKeys);
        }
        if due(&mut self.retransmit_handshake) {
            return Some(Timer::RetransmitHandshake);
        }
        if due(&mut self.new_handshake) {
            return Some(Timer::NewHandshake);
        }
        if due(&mut self.send_keepalive) {
            return Some(Timer::SendKeepalive);
        }
        if due(&mut self.persistent_keepalive) {
            return Some(Timer::PersistentKeepalive);
        }
        None
    }

    /// After a keepalive timer fired: whether data came in meanwhile that
    /// wants another one, re-arming it.
    pub fn rearm_keepalive_if_wanted(&mut self, now: u64, s: &TimerSettings) {
        if std::mem::take(&mut self.another_keepalive) {
            self.send_keepalive = Some(now + s.keepalive_timeout());
        }
    }

    /// We sent a handshake initiation (`jitter` up to a third of a second).
    pub fn initiation_sent(&mut self, now: u64, s: &TimerSettings, jitter: u64) {
        self.retransmit_handshake = Some(now + s.rekey_timeout() + jitter);
    }

    /// A handshake completed: stop retransmitting, reset the attempt count.
    pub fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.attempts = 0;
    }

    /// Whether an attempt is being retransmitted.
    pub fn handshake_pending(&self) -> bool {
        self.retransmit_handshake.is_some()
    }

    /// New keys were derived (either role): restart the erase countdown.
    pub fn session_derived(&mut self, now: u64, s: &TimerSettings) {
        self.zero_keys = Some(now + s.zero_keys_after());
    }

    /// Gave up on an attempt: keys go after the erase time unless a handshake completes.
    pub fn attempt_abandoned(&mut self, now: u64, s: &TimerSettings) {
        self.retransmit_handshake = None;
        self.attempts = 0;
        self.new_handshake = None;
        if self.zero_keys.is_none() {
            self.zero_keys = Some(now + s.zero_keys_after());
        }
    }

    /// We sent a data packet (not a keepalive). `jitter` is only asked for
    /// when the timer is armed, not for every packet.
    pub fn data_sent(&mut self, now: u64, s: &TimerSettings, jitter: impl FnOnce() -> u64) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + s.keepalive_timeout() + s.rekey_timeout() + jitter());
        }
    }

    /// We received a data packet (not a keepalive).
    pub fn data_received(&mut self, now: u64, s: &TimerSettings) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + s.keepalive_timeout());
        } else {
            self.another_keepalive = true;
        }
    }

    /// We sent any authenticated packet (data, keepalive, handshake).
    pub fn any_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// We received any authenticated packet.
    pub fn any_received(&mut self) {
        self.new_handshake = None;
    }

    /// Any authenticated packet went either way: push back the persistent keepalive.
    pub fn any_traversal(&mut self, now: u64, persistent_keepalive_ns: u64) {
        self.persistent_keepalive =
            (persistent_keepalive_ns > 0).then(|| now + persistent_keepalive_ns);
    }

    /// Everything stops (keys erased or peer removed).
    pub fn clear(&mut self) {
        *self = PeerTimers::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_whitepapers_and_valid() {
        let s = TimerSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.max_attempts(), 18);
        assert_eq!(s.rekey_on_receive_age(), 165 * S);
        assert_eq!(s.zero_keys_after(), 540 * S);
    }

    #[test]
    fn invalid_relations_are_named() {
        let s = TimerSettings {
            rekey_after_time_s: 200,
            ..TimerSettings::default()
        };
        assert!(s.validate().unwrap_err().contains("rekey_after_time_s"));
        let s = TimerSettings {
            rekey_timeout_s: 0,
            ..TimerSettings::default()
        };
        assert!(s.validate().unwrap_err().contains("rekey_timeout_s"));
    }

    #[test]
    fn received_data_wants_a_keepalive_unless_we_answer() {
        let s = TimerSettings::default();
        let mut t = PeerTimers::default();
        t.data_received(0, &s);
        assert_eq!(t.next_deadline(), Some(10 * S));
        t.any_sent();
        assert_eq!(t.next_deadline(), None);
        t.data_received(S, &s);
        assert_eq!(t.take_due(5 * S), None);
        assert_eq!(t.take_due(11 * S), Some(Timer::SendKeepalive));
        assert_eq!(t.take_due(11 * S), None);
    }

    #[test]
    fn data_sent_without_answer_starts_a_new_handshake() {
        let s = TimerSettings::default();
        let mut t = PeerTimers::default();
        t.data_sent(0, &s, || 0);
        t.data_sent(S, &s, || 0); // does not push the deadline back
        assert_eq!(t.take_due(15 * S), Some(Timer::NewHandshake));
        t.data_sent(20 * S, &s, || 0);
        t.any_received();
        assert_eq!(t.take_due(100 * S), None);
    }

    #[test]
    fn a_second_data_packet_during_the_keepalive_wait_wants_another_keepalive() {
        let s = TimerSettings::default();
        let mut t = PeerTimers::default();
        t.data_received(0, &s);
        t.data_received(S, &s);
        assert_eq!(t.take_due(10 * S), Some(Timer::SendKeepalive));
        t.rearm_keepalive_if_wanted(10 * S, &s);
        assert_eq!(t.take_due(20 * S), Some(Timer::SendKeepalive));
        t.rearm_keepalive_if_wanted(20 * S, &s);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn persistent_keepalive_follows_the_last_traversal() {
        let mut t = PeerTimers::default();
        t.any_traversal(0, 25 * S);
        t.any_traversal(10 * S, 25 * S);
        assert_eq!(t.take_due(25 * S), None);
        assert_eq!(t.take_due(35 * S), Some(Timer::PersistentKeepalive));
        t.any_traversal(40 * S, 0);
        assert_eq!(t.next_deadline(), None);
    }
}
