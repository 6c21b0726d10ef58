//! The event feed: every state change the control plane sees, numbered,
//! kept in a bounded ring for watchers that resume, and broadcast live.
//!
//! A watcher that falls more than [`LIVE_CAPACITY`] events behind is not
//! allowed to hold the feed back: it gets one `EVENTS_LOST` event saying how
//! many it missed and carries on from the present.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use patronus_proto::v1::{Event, EventType};
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// Events kept for watchers that resume or list the recent past.
pub const RETAINED: usize = 4096;
/// Events a live watcher may fall behind before it is told it lost some.
pub const LIVE_CAPACITY: usize = 1024;

/// A boxed stream of events, as the gRPC service returns it.
pub type EventStream = Pin<Box<dyn Stream<Item = Arc<Event>> + Send>>;

#[derive(Debug)]
struct Ring {
    next_id: u64,
    retained: VecDeque<Arc<Event>>,
}

/// The feed.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            ring: Mutex::new(Ring {
                next_id: 1,
                retained: VecDeque::with_capacity(RETAINED),
            }),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }
}

/// Which events a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this site's ("" for all). Events about no site in particular
    /// (policies) reach every watcher.
    pub site_id: String,
    /// Only events with a larger id from the retained ones.
    pub after_id: u64,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        self.site_id.is_empty() || e.site_id.is_empty() || e.site_id == self.site_id
    }
}

impl EventLog {
    /// Numbers, timestamps, retains and broadcasts `event`.
    pub fn emit(&self, mut event: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        event.id = ring.next_id;
        ring.next_id += 1;
        event.time = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
        let event = Arc::new(event);
        if ring.retained.len() == RETAINED {
            ring.retained.pop_front();
        }
        ring.retained.push_back(event.clone());
        // Sent under the lock, so a watcher's replay and live parts neither
        // overlap nor leave a gap. No receivers is not an error.
        let _ = self.live.send(event);
    }

    /// The retained events the filter wants and, when `follow`, every later
    /// one as it happens.
    pub fn watch(&self, filter: Filter, follow: bool) -> EventStream {
        let (replay, live) = {
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let replay: Vec<Arc<Event>> = ring
                .retained
                .iter()
                .filter(|e| e.id > filter.after_id && filter.matches(e))
                .cloned()
                .collect();
            (replay, follow.then(|| self.live.subscribe()))
        };
        let replay = tokio_stream::iter(replay);
        let Some(live) = live else {
            return Box::pin(replay);
        };
        let live = BroadcastStream::new(live).filter_map(move |item| match item {
            Ok(e) if filter.matches(&e) => Some(e),
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Arc::new(Event {
                r#type: EventType::EventsLost as i32,
                message: format!(
                    "{n} events were dropped because this watcher fell behind; resynchronise with Get and List"
                ),
                ..Default::default()
            })),
        });
        Box::pin(replay.chain(live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(site: &str, name: &str) -> Event {
        Event {
            r#type: EventType::ResourceCreated as i32,
            site_id: site.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_overlap() {
        let log = EventLog::default();
        log.emit(event("a", "1"));
        log.emit(event("b", "2"));
        let mut all = log.watch(Filter::default(), true);
        let mut only_a = log.watch(
            Filter {
                site_id: "a".into(),
                after_id: 0,
            },
            true,
        );
        log.emit(event("a", "3"));
        log.emit(event("", "policy"));
        let ids: Vec<u64> = (&mut all).take(4).map(|e| e.id).collect().await;
        assert_eq!(ids, [1, 2, 3, 4]);
        let names: Vec<String> = (&mut only_a)
            .take(3)
            .map(|e| e.name.clone())
            .collect()
            .await;
        assert_eq!(names, ["1", "3", "policy"]);
        let resumed: Vec<u64> = log
            .watch(
                Filter {
                    site_id: String::new(),
                    after_id: 2,
                },
                false,
            )
            .map(|e| e.id)
            .collect()
            .await;
        assert_eq!(resumed, [3, 4], "without follow the stream ends");
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_what_it_lost() {
        let log = EventLog::default();
        let mut slow = log.watch(Filter::default(), true);
        for i in 0..LIVE_CAPACITY + 10 {
            log.emit(event("a", &i.to_string()));
        }
        let first = slow.next().await.unwrap();
        assert_eq!(first.r#type, EventType::EventsLost as i32);
        assert!(first.message.starts_with("10 events"), "{}", first.message);
        assert_eq!(slow.next().await.unwrap().id, 11);
    }

    #[test]
    fn the_ring_keeps_the_latest() {
        let log = EventLog::default();
        for i in 0..RETAINED + 5 {
            log.emit(event("a", &i.to_string()));
        }
        let ring = log.ring.lock().unwrap();
        assert_eq!(ring.retained.len(), RETAINED);
        assert_eq!(ring.retained.front().unwrap().id, 6);
    }
}
