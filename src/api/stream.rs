//! `GET /v1/stream`: the live feed as server-sent events. After each checkpoint, one
//! `killmail` event per killmail a version of which was applied, and, for the entities a
//! subscription names, one `stats` event with their new all-time statistics. Each event's id
//! is `<epoch>:<index>` (the checkpoint's epoch and the event's place in it); a client that
//! reconnects with `Last-Event-ID` gets exactly the events after it, for as long as the feed
//! keeps that checkpoint (see [`crate::feed`]), and a `resync` event past it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use kmflow_dataflows::model::CENTS_PER_ISK;
use kmflow_dataflows::{EntityKey, EntityKind, Stats, StoredKillmail};

use super::body::StatsBody;
use super::error::{ApiError, ErrorBody};
use super::killmails::KillmailBody;
use super::params::{parse_decimal, Params};
use super::AppState;
use crate::feed::{Cursor, Feed, FeedCheckpoint, Next};
use crate::metrics::Metrics;

/// `GET /v1/stream`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated character ids: their killmails only, and `stats` events for them.
    pub characters: Option<String>,
    /// Comma-separated corporation ids (as `characters`).
    pub corporations: Option<String>,
    /// Comma-separated alliance ids (as `characters`).
    pub alliances: Option<String>,
    /// Only killmails appraised at this many ISK or more.
    pub min_isk: Option<String>,
    /// Resume after this event id, for clients that cannot send `Last-Event-ID`.
    pub last_event_id: Option<String>,
    /// `false`: send what is kept after the position, then end the stream (a catch-up read);
    /// default `true`: follow the feed until the client leaves.
    pub follow: Option<bool>,
}

/// The `stats` event's data.
#[derive(Serialize, ToSchema)]
pub struct StatsEvent {
    /// `character`, `corporation` or `alliance`.
    pub kind: &'static str,
    pub id: u64,
    /// The checkpoint that made them visible.
    pub epoch: u64,
    pub stats: StatsBody,
}

/// One server-sent event as a client reads it (the schema of the stream's items).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the wire format; events are written by axum's `Event`
pub struct SseEvent {
    /// `subscribed`, `killmail`, `stats`, `checkpoint`, `resync` or `dropped`.
    #[schema(pattern = "^(subscribed|killmail|stats|checkpoint|resync|dropped)$")]
    pub event: String,
    /// `<epoch>:<index>`, `<epoch>` or `start`: where a reconnect resumes. Absent on `dropped`.
    pub id: Option<String>,
    /// A JSON object: a killmail (`killmail`), a `StatsEvent` (`stats`), or the details of
    /// the other events.
    pub data: String,
}

/// What a subscription asks for.
struct Filter {
    entities: HashSet<EntityKey>,
    min_isk_cents: Option<i128>,
}

impl Filter {
    fn parse(q: &StreamQuery, max_ids: usize) -> Result<Filter, ApiError> {
        let mut entities = HashSet::new();
        for (name, raw, kind) in [
            ("characters", &q.characters, EntityKind::Character),
            ("corporations", &q.corporations, EntityKind::Corporation),
            ("alliances", &q.alliances, EntityKind::Alliance),
        ] {
            for item in raw.iter().flat_map(|r| r.split(',')).map(str::trim) {
                match parse_decimal(item) {
                    Some(id) if id > 0 => entities.insert(EntityKey::new(kind, id)),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid {name} {item:?}: must be comma-separated positive integers"
                        )))
                    }
                };
            }
        }
        if entities.len() > max_ids {
            return Err(ApiError::bad_request(format!(
                "at most {max_ids} ids over characters, corporations and alliances (stream.max-filter-ids), got {}",
                entities.len()
            )));
        }
        let min_isk_cents = match &q.min_isk {
            None => None,
            Some(raw) => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 && !raw.starts_with('+') => {
                    Some((v * CENTS_PER_ISK as f64).ceil() as i128)
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid min_isk {raw:?}: must be a non-negative number of ISK"
                    )))
                }
            },
        };
        Ok(Filter {
            entities,
            min_isk_cents,
        })
    }

    fn wants_killmail(&self, s: &StoredKillmail) -> bool {
        let km = &s.killmail;
        if let Some(min) = self.min_isk_cents {
            if km.zkb.is_none_or(|z| (z.total_value_cents as i128) < min) {
                return false;
            }
        }
        if self.entities.is_empty() {
            return true;
        }
        let hit = |c: Option<u64>, corp: Option<u64>, a: Option<u64>| {
            [
                (EntityKind::Character, c),
                (EntityKind::Corporation, corp),
                (EntityKind::Alliance, a),
            ]
            .into_iter()
            .any(|(k, id)| id.is_some_and(|id| self.entities.contains(&EntityKey::new(k, id))))
        };
        let v = &km.victim;
        hit(v.character_id, v.corporation_id, v.alliance_id)
            || km
                .attackers
                .iter()
                .any(|a| hit(a.character_id, a.corporation_id, a.alliance_id))
    }
}

/// One subscriber's slot among `stream.max-subscribers`; freed when its stream ends.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize, metrics: &Metrics) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        metrics.stream.subscribers.inc();
        Some(Slot {
            open: open.clone(),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.stream.subscribers.dec();
    }
}

/// A subscriber: where it is in the feed and what it wants.
struct Subscriber {
    feed: Arc<Feed>,
    watch: tokio::sync::watch::Receiver<Option<u64>>,
    /// Everything up to here was sent (or skipped by the filter).
    cursor: Cursor,
    /// The checkpoint being sent and the next event's index in it.
    current: Option<(Arc<FeedCheckpoint>, usize)>,
    filter: Filter,
    topics: Arc<Vec<String>>,
    metrics: Metrics,
    /// Whether the first read of the feed happened (a cursor gone then is a resync; later,
    /// a subscriber too slow).
    started: bool,
    /// Whether the `subscribed` event was sent.
    greeted: bool,
    /// Whether to wait for new checkpoints once the kept ones are sent (`follow`).
    follow: bool,
    done: bool,
    _slot: Slot,
}

impl Subscriber {
    /// The next event to send; `None` ends the stream.
    async fn next_event(&mut self) -> Option<Event> {
        if !self.greeted {
            // First, where this subscription starts, as an id: a client that reconnects
            // before any other event still resumes without a gap.
            self.greeted = true;
            self.metrics
                .stream
                .events
                .with_label_values(&["subscribed"])
                .inc();
            let data = json!({"after": self.cursor.id(), "head": self.feed.head()});
            return Some(
                Event::default()
                    .event("subscribed")
                    .id(self.cursor.id())
                    .data(data.to_string()),
            );
        }
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.next_of_current() {
                return Some(ev);
            }
            match self.feed.next(self.cursor) {
                Next::Read(cp, from) => self.current = Some((cp, from)),
                Next::Wait => {
                    self.started = true;
                    if !self.follow {
                        return None; // caught up: a catch-up read ends here
                    }
                    if self.watch.changed().await.is_err() {
                        return None;
                    }
                }
                Next::Gone { oldest, head } => return Some(self.gone(oldest, head)),
            }
        }
    }

    /// The next event of the current checkpoint the filter wants; past its last one, a
    /// `checkpoint` event (id: the epoch) when the filter skipped the checkpoint's tail, so
    /// the client's last id always moves to the latest checkpoint it has seen in full.
    fn next_of_current(&mut self) -> Option<Event> {
        let (cp, mut i) = self.current.take()?;
        self.started = true;
        let skipped_tail = i < cp.len();
        let k = cp.killmails.len();
        while i < cp.len() {
            let index = i;
            i += 1;
            self.cursor = Cursor {
                epoch: Some(cp.epoch),
                index: Some(index),
            };
            let event = if index < k {
                let s = &cp.killmails[index];
                self.filter.wants_killmail(s).then(|| {
                    let body = KillmailBody::new(s, &self.topics);
                    ("killmail", serde_json::to_string(&body))
                })
            } else {
                let (key, stats): &(EntityKey, Stats) = &cp.stats[index - k];
                self.filter.entities.contains(key).then(|| {
                    let body = StatsEvent {
                        kind: key.kind.as_str(),
                        id: key.id,
                        epoch: cp.epoch,
                        stats: StatsBody::new(stats, true),
                    };
                    ("stats", serde_json::to_string(&body))
                })
            };
            if let Some((kind, Ok(data))) = event {
                self.current = Some((cp.clone(), i));
                self.metrics.stream.events.with_label_values(&[kind]).inc();
                return Some(
                    Event::default()
                        .event(kind)
                        .id(format!("{}:{index}", cp.epoch))
                        .data(data),
                );
            }
        }
        self.cursor = Cursor {
            epoch: Some(cp.epoch),
            index: None,
        };
        skipped_tail.then(|| {
            self.metrics
                .stream
                .events
                .with_label_values(&["checkpoint"])
                .inc();
            Event::default()
                .event("checkpoint")
                .id(cp.epoch.to_string())
                .data(json!({"epoch": cp.epoch}).to_string())
        })
    }

    /// The cursor is no longer covered by the feed.
    fn gone(&mut self, oldest: Option<u64>, head: Option<u64>) -> Event {
        if self.started {
            // It fell behind while connected: drop it rather than hold the feed.
            self.done = true;
            self.metrics
                .stream
                .dropped
                .with_label_values(&["slow"])
                .inc();
            self.metrics
                .stream
                .events
                .with_label_values(&["dropped"])
                .inc();
            let data = json!({
                "reason": "slow",
                "message": "this subscriber fell behind the checkpoints kept (stream.retain-checkpoints / stream.retain-mb); reconnect with Last-Event-ID to resume, or resync if told to",
            });
            return Event::default().event("dropped").data(data.to_string());
        }
        // Resuming from before what is kept (or from another state): start at the head.
        self.started = true;
        self.cursor = Cursor {
            epoch: head,
            index: None,
        };
        self.metrics
            .stream
            .events
            .with_label_values(&["resync"])
            .inc();
        let data = json!({
            "reason": "the requested event is no longer kept (or was never part of this state): re-read the statistics you need, then follow this stream",
            "kept_after": oldest,
            "head": head,
        });
        let ev = Event::default().event("resync").data(data.to_string());
        match head {
            Some(h) => ev.id(h.to_string()),
            None => ev,
        }
    }
}

/// The live feed as server-sent events (`curl -N`).
///
/// Events: `subscribed` (first; its id is where the subscription starts), `killmail` (data: a
/// killmail as `GET /v1/killmails/{id}` answers it), `stats` (data: `StatsEvent`),
/// `checkpoint` (a checkpoint whose last events the filters skipped: its id moves the client's
/// position), `resync` (the requested `Last-Event-ID` is not kept: re-read, then follow) and
/// `dropped` (the subscriber was too slow; last event). Ids are `<epoch>:<index>`, `<epoch>`
/// or `start`.
#[utoipa::path(get, path = "/v1/stream", tag = "killmails",
    params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = SseEvent,
            description = "Server-sent events, one item per event: subscribed, killmail, stats, checkpoint, resync, dropped"),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn get_stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = Filter::parse(&q, s.stream.max_filter_ids)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => q.last_event_id.clone(),
    };
    let cursor = match resume {
        None => Cursor {
            epoch: s.feed.head(),
            index: None,
        },
        Some(raw) => Cursor::parse(raw.trim()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid Last-Event-ID {raw:?}: pass the id of the last event received"
            ))
        })?,
    };
    let Some(slot) = Slot::take(&s.subscribers, s.stream.max_subscribers, &s.metrics) else {
        s.metrics.stream.dropped.with_label_values(&["limit"]).inc();
        return Err(ApiError::Overloaded(format!(
            "{} stream subscribers are open (stream.max-subscribers); retry later",
            s.stream.max_subscribers
        )));
    };
    let sub = Subscriber {
        feed: s.feed.clone(),
        watch: s.feed.watch(),
        cursor,
        current: None,
        filter,
        topics: s.topics.clone(),
        metrics: s.metrics.clone(),
        started: false,
        greeted: false,
        follow: q.follow.unwrap_or(true),
        done: false,
        _slot: slot,
    };
    let events = futures_util::stream::unfold(sub, |mut sub| async move {
        let ev = sub.next_event().await?;
        Some((Ok(ev), sub))
    });
    // A comment line often enough that idle connections outlive `api.idle-timeout-ms`.
    let every = Duration::from_secs(10).min(s.idle_timeout / 3);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(every)))
}
