//! `GET` presence: which sessions have a stream open anywhere in the cluster (see
//! [`sse_core::presence`]).

use http::request::Parts;
use http::{Response, StatusCode};
use serde::Serialize;
use sse_core::presence::{PresenceCounts, SessionPresence};

use crate::body::SseBody;
use crate::error::{ApiError, json_response};
use crate::router::SseRouter;

/// Session ids one query may name at most.
const MAX_SESSIONS: usize = 100;

/// Sessions one page lists by default, and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    /// Whether this instance holds the cluster's state (it does not in its first moments).
    synced: bool,
    counts: Counts,
    sessions: Vec<Session>,
    /// The `after` of the next page of an `eventName` query; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Serialize)]
struct Counts {
    sessions: usize,
    streams: u64,
    instances: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    session_id: String,
    online: bool,
    streams: u64,
    instances: usize,
    /// Unix ms since the session's longest-held stream's instance has had it.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
}

impl From<SessionPresence> for Session {
    fn from(s: SessionPresence) -> Self {
        Session {
            session_id: s.session_id.to_string(),
            online: s.online,
            streams: s.streams,
            instances: s.instances,
            since: s.since.map(sse_core::history::unix_millis),
        }
    }
}

impl From<PresenceCounts> for Counts {
    fn from(c: PresenceCounts) -> Self {
        Counts {
            sessions: c.sessions,
            streams: c.streams,
            instances: c.instances,
        }
    }
}

impl SseRouter {
    /// `GET` presence: `?sessionId=a,b` (up to 100 ids) answers for those sessions;
    /// otherwise `?eventName=room-42[&after=<id>][&limit=<n>]` lists the sessions with a stream
    /// listening to that name, in id order, a page at a time (100 by default, at most 1000;
    /// `next` is the `after` of the next page); with neither, the counts alone. Guarded as publishing is: a publish JWT must grant the event
    /// name, or every name (`*`) for a `sessionId` query. `404` when the hub tracks no presence.
    pub async fn presence(&self, request: &Parts) -> Result<Response<SseBody>, ApiError> {
        let grant = self.publish_grant(&request.headers).await?;
        let Some(presence) = self.inner.hub.presence() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "presence_off",
                "this hub does not track presence (start it with --presence)",
            ));
        };
        let query = Query::parse(request.uri.query().unwrap_or(""))?;
        let (sessions, next) = match query {
            Query::Sessions(ids) => {
                if !ids.is_empty() && grant.is_some_and(|grant| !grant.allows_all()) {
                    return Err(ApiError::forbidden(
                        "asking for sessions needs the publish token, or a grant of every event \
                         name (*)",
                    ));
                }
                let sessions = ids.iter().map(|id| presence.session(id).into()).collect();
                (sessions, None)
            }
            Query::Listening {
                event_name,
                after,
                limit,
            } => {
                if grant.is_some_and(|grant| !grant.allows(&event_name)) {
                    return Err(ApiError::forbidden(format!(
                        "the token does not grant the event name `{event_name}`"
                    )));
                }
                let page = presence.sessions_for(&event_name, after.as_deref(), limit);
                let next = (page.len() == limit)
                    .then(|| page.last().map(|s| s.session_id.to_string()))
                    .flatten();
                (page.into_iter().map(Session::from).collect(), next)
            }
        };
        Ok(json_response(
            StatusCode::OK,
            &Answer {
                synced: presence.synced(),
                counts: presence.counts().into(),
                sessions,
                next,
            },
        ))
    }
}

/// What a presence query asks.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    Sessions(Vec<String>),
    Listening {
        event_name: String,
        after: Option<String>,
        limit: usize,
    },
}

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        let (mut sessions, mut event_name, mut after, mut limit) = (None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sessionId" | "eventName" if value.is_empty() => {
                    return Err(ApiError::bad_request(format!("{key} is empty")));
                }
                "sessionId" => sessions = Some(value.into_owned()),
                "eventName" => event_name = Some(value.into_owned()),
                "after" => after = Some(value.into_owned()),
                "limit" => {
                    limit = Some(
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|l| (1..=MAX_PAGE).contains(l))
                            .ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "limit must be a number from 1 to {MAX_PAGE}"
                                ))
                            })?,
                    );
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}`"
                    )));
                }
            }
        }
        // `sessionId` names the sessions; without it `eventName` lists a page; with neither, the
        // counts alone.
        match (sessions, event_name) {
            (Some(ids), _) => {
                let ids: Vec<String> = ids
                    .split(',')
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect();
                if ids.len() > MAX_SESSIONS {
                    return Err(ApiError::bad_request(format!(
                        "sessionId names {} ids; at most {MAX_SESSIONS} are allowed",
                        ids.len()
                    )));
                }
                Ok(Query::Sessions(ids))
            }
            (None, Some(event_name)) => Ok(Query::Listening {
                event_name,
                after,
                limit: limit.unwrap_or(PAGE),
            }),
            _ => Ok(Query::Sessions(Vec::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_are_read_or_refused() {
        assert_eq!(
            Query::parse("sessionId=a,b").unwrap(),
            Query::Sessions(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            Query::parse("eventName=room%2042&after=u1&limit=5").unwrap(),
            Query::Listening {
                event_name: "room 42".into(),
                after: Some("u1".into()),
                limit: 5
            }
        );
        // Neither: the counts alone; both: the sessions named.
        assert_eq!(Query::parse("").unwrap(), Query::Sessions(Vec::new()));
        assert_eq!(
            Query::parse("limit=3").unwrap(),
            Query::Sessions(Vec::new())
        );
        assert_eq!(
            Query::parse("sessionId=,").unwrap(),
            Query::Sessions(Vec::new())
        );
        assert!(Query::parse("sessionId=").is_err());
        assert!(Query::parse("eventName=").is_err());
        assert_eq!(
            Query::parse("sessionId=a&eventName=b").unwrap(),
            Query::Sessions(vec!["a".into()])
        );
        for bad in ["eventName=x&limit=0", "eventName=x&limit=1001", "other=1"] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
        let many = vec!["x"; 101].join(",");
        assert!(Query::parse(&format!("sessionId={many}")).is_err());
    }
}
